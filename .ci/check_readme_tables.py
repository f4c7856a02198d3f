"""The README's tables are what README command 1 printed (stdlib only).

    python3 .ci/check_readme_tables.py runs/digits     # after README command 1

Every Markdown table that follows a line ``<!-- from: headline.md -->`` in README.md or
docs/results.md must be, row by row, a table of ``OUT/headline.md``, the file the main job
writes and prints. Cells are compared token by token: words exactly; numbers exactly, or,
because floating point differs in its last bits between CPUs (AMD and Intel give the same
study up to an image or two), within 0.6 points for percentages and points (2 of the study's
359 images) and within 0.01 or 5% for other numbers. Any other difference fails, naming the
file, the line and the cell.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- from: headline.md -->"
NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?")
DOCS = ("README.md", "docs/results.md")


def tables(text: str) -> list[list[str]]:
    """Every Markdown table of ``text``, as its lines (header and separator included)."""
    found, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line.strip())
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def marked(text: str) -> list[tuple[int, list[str]]]:
    """The tables that follow the marker, with the line number of their first row."""
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        start = number + 1
        while start < len(lines) and not lines[start].startswith("|"):
            start += 1
        rows = []
        while start + len(rows) < len(lines) and lines[start + len(rows)].startswith("|"):
            rows.append(lines[start + len(rows)].strip())
        out.append((start + 1, rows))
    return out


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def close(mine: str, theirs: str) -> bool:
    """Two cells agree: the same words, and numbers within the tolerance of the docstring."""
    if mine == theirs:
        return True
    if NUMBER.sub("#", mine) != NUMBER.sub("#", theirs):
        return False
    points = "%" in mine or "points" in mine or "±" in mine
    for a, b in zip(NUMBER.findall(mine), NUMBER.findall(theirs), strict=True):
        x, y = float(a.replace("−", "-")), float(b.replace("−", "-"))
        if abs(x - y) > (0.6 if points else max(0.01, 0.05 * abs(y))):
            return False
    return True


def compare(rows: list[str], headline: list[list[str]]) -> list[str] | None:
    """Problems of ``rows`` against the closest headline table with the same header (None: no
    such table; several tables share a header, such as the ℓ∞ and ℓ2 report cards)."""
    found = None
    for table in headline:
        if table[0] != rows[0]:
            continue
        problems = []
        if len(table) != len(rows):
            problems.append(f"{len(rows) - 2} rows, the main job printed {len(table) - 2}")
        for mine, theirs in zip(rows[2:], table[2:], strict=False):
            for a, b in zip(cells(mine), cells(theirs), strict=False):
                if not close(a, b):
                    problems.append(f"{cells(mine)[0]}: {a!r}, the main job printed {b!r}")
        if found is None or len(problems) < len(found):
            found = problems
    return found


def main(out: Path) -> None:
    headline = tables((out / "headline.md").read_text(encoding="utf-8"))
    problems, checked, exact = [], 0, 0
    for name in DOCS:
        text = (ROOT / name).read_text(encoding="utf-8")
        for line, rows in marked(text):
            found = compare(rows, headline)
            checked += 1
            if found is None:
                problems.append(f"{name}:{line}: no table with this header in {out}/headline.md")
            else:
                problems += [f"{name}:{line}: {p}" for p in found]
                exact += rows in headline
    if checked == 0:
        problems.append(f"no table in {', '.join(DOCS)} is marked {MARKER}")
    if problems:
        raise SystemExit("the docs' tables are not what the main job printed:\n  "
                         + "\n  ".join(problems))
    print(f"docs' tables: {checked} checked against {out}/headline.md, {exact} identical, "
          f"{checked - exact} within the CPUs' tolerance")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
