"""Check what README command 1 (``epsl reproduce``) left in its folder: the report, the
figures and the tables, each complete (stdlib only; run with the system python3).

    python3 .ci/check_main_job.py runs/digits
"""

from __future__ import annotations

import csv
import sys
import tomllib
from pathlib import Path


def main(out: Path) -> None:
    problems = []
    preset = tomllib.loads((Path(__file__).resolve().parent.parent / "epsl" / "study" / "presets"
                            / "digits.toml").read_text())
    models = [m["name"] for m in preset["models"]]
    report = out / "report.html"
    if not report.is_file() or "<table" not in report.read_text(encoding="utf-8"):
        problems.append(f"{report}: missing or holds no table")
    table = out / "comparison.csv"
    rows = list(csv.DictReader(table.open(encoding="utf-8"))) if table.is_file() else []
    if len(rows) != len(models):
        problems.append(f"{table}: {len(rows)} rows, expected one per model ({len(models)})")
    for row in rows:
        empty = [c for c in ("clean_accuracy", "eq4_predicted", "fgsm_xent", "pgd_cw",
                             "audit_worst") if not row.get(c)]
        if empty:
            problems.append(f"{table}: {row.get('model')} lacks {empty}")
    for name in ("comparison.md", "headline.md"):
        if not (out / name).is_file() or not (out / name).read_text(encoding="utf-8").strip():
            problems.append(f"{out / name}: missing or empty")
    pngs = sorted((out / "figures").glob("*.png"))
    if len(pngs) < 10:
        problems.append(f"{out / 'figures'}: {len(pngs)} PNG figures, expected at least 10")
    bad = [p.name for p in pngs if p.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n"]
    if bad:
        problems.append(f"not PNG files: {bad}")
    models_dir = out / "models"
    missing = [m for m in models if not (models_dir / f"{m}.safetensors").is_file()]
    if missing:
        problems.append(f"{models_dir}: no checkpoint for {missing}")
    if problems:
        raise SystemExit("main job output incomplete:\n  " + "\n  ".join(problems))
    print(f"main job output complete: {len(models)} models, {len(pngs)} figures, {report}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
