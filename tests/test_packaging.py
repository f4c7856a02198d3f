"""The wheel built from the tree holds every module and data file of the three package folders.

``pip install -e .`` hides a package left out of the build (the source folder is on the path);
a wheel does not. This test builds one and compares its file list with the folders, so a new
subpackage or data file that the build leaves out fails here (the ``wheel`` fixture of
``conftest.py`` builds it once for the session). ``.ci/run`` also installs the
wheel, without ``-e``, into a fresh venv and runs a command from outside the tree.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The design card's layout: source folder -> installed package path.
FOLDERS = {"epsl": "epsl", "cli": "epsl/cli", "analysis": "epsl/analysis"}


def _tree_files() -> set[str]:
    files: set[str] = set()
    for folder, installed in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    # epsl/cli and epsl/analysis are not inside the epsl folder: its rglob does not see them
    return files


def test_wheel_holds_every_file_of_the_package_folders(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
    expected = _tree_files()
    assert "epsl/diagnostics/margins.py" in expected  # the subpackage once left out
    assert "epsl/study/presets/digits.toml" in expected and "epsl/py.typed" in expected
    assert sorted(expected - names) == [], "files of the tree missing from the wheel"
    assert sorted(names - expected) == [], "files in the wheel that are not in the tree"


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (entry,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry).decode()
    assert "epsl = epsl.cli.entry:main" in text
