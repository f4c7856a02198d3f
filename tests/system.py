"""Tests that need a system package, not a Python one: they skip with the reason when it is
absent, so that README command 2 passes on a fresh machine. ``.ci/run`` installs the packages
after the newcomer's path and runs ``pytest -m "chromium or debian_data"`` with
``EPSL_REQUIRE_SYSTEM=1``, under which a missing package fails instead of skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from epsl.data import DEBIAN_FASHION_MNIST

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("EPSL_REQUIRE_SYSTEM") == "1"


def _needs(mark: pytest.MarkDecorator, present: bool, reason: str) -> pytest.MarkDecorator:
    def apply(test):  # type: ignore[no-untyped-def]
        return mark(pytest.mark.skipif(not present and not REQUIRED, reason=reason)(test))

    return apply  # type: ignore[return-value]


needs_chromium = _needs(pytest.mark.chromium, CHROMIUM.exists(),
                        "Debian's chromium is not installed (apt-get install chromium); "
                        ".ci/run installs it")
needs_debian_fashion_mnist = _needs(
    pytest.mark.debian_data, DEBIAN_FASHION_MNIST.is_dir(),
    "Debian's Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); "
    ".ci/run installs it")
