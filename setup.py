"""Which folders make the ``epsl`` package (everything else is in pyproject.toml).

The design card keeps three top-level folders: ``epsl/`` (the library), ``cli/`` (installed as
``epsl.cli``) and ``analysis/`` (installed as ``epsl.analysis``). setuptools' declarative
``packages`` list must name every subpackage by hand, which once left ``epsl.diagnostics`` out of
the wheel; here every package under the three folders is found, so a new one cannot be left out.
``tests/test_packaging.py`` builds the wheel and compares its files with these folders.
"""

from setuptools import find_packages, setup

FOLDERS = {"epsl": "epsl", "epsl.cli": "cli", "epsl.analysis": "analysis"}

packages = []
for name, folder in FOLDERS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=FOLDERS)
