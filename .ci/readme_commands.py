"""The README's two set-up commands, read out of README.md so that CI runs exactly what a new
user pastes (stdlib only: it runs before any virtual environment exists).

    python3 .ci/readme_commands.py main    # README command 1: the main job
    python3 .ci/readme_commands.py tests   # README command 2: the tests
    python3 .ci/readme_commands.py out     # the folder the main job writes (its --out)

The commands are the one-line ```bash blocks that start with ``python3 -m venv``; there must
be exactly two, the main job first.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def commands(text: str) -> dict[str, str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)
    found = [block.strip() for block in blocks if block.strip().startswith("python3 -m venv")]
    if len(found) != 2 or any("\n" in command for command in found):
        raise SystemExit(f"{README}: expected exactly two one-line ```bash blocks starting with "
                         f"'python3 -m venv' (main job, tests); found {len(found)}")
    main, tests = found
    words = shlex.split(main)
    if "epsl" not in words or "--out" not in words or "pytest" not in tests:
        raise SystemExit(f"{README}: the first command must run epsl with --out, the second "
                         "pytest")
    return {"main": main, "tests": tests, "out": words[words.index("--out") + 1]}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("main", "tests", "out"):
        raise SystemExit("usage: readme_commands.py main|tests|out")
    print(commands(README.read_text(encoding="utf-8"))[sys.argv[1]])
