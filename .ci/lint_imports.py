"""Check the import contracts of pyproject.toml ([tool.importlinter]) on the package as it is
installed: ``cli/`` and ``analysis/`` become ``epsl/cli`` and ``epsl/analysis`` (setup.py), a
layout that import-linter cannot see in the source tree, so the tree is assembled in a
temporary folder first.

    .venv/bin/python .ci/lint_imports.py      # exit status 1 when a contract is broken
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "epsl"
        shutil.copytree(ROOT / "epsl", package, ignore=ignore)
        for folder in ("cli", "analysis"):
            shutil.copytree(ROOT / folder, package / folder, ignore=ignore)
        lint = Path(sys.executable).with_name("lint-imports")
        env = {**os.environ, "PYTHONPATH": tmp}
        return subprocess.run([str(lint), str(ROOT / "pyproject.toml"),
                               "--no-cache"], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
