"""A RobustBench model with random weights, loaded through epsl's own zoo path.

The architecture comes from RobustBench's model zoo; its state_dict is written in RobustBench's
layout (``DIR/DATASET/THREAT/NAME.pt``) and read back with ``epsl.load``, so a benchmark times
exactly what a user with the real checkpoint gets. Nothing is downloaded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def zoo_model(spec: str, folder: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """``(model, metadata)`` for ``robustbench:DATASET/THREAT/NAME`` with seeded random weights."""
    import torch

    import epsl
    from epsl.models.sources import robustbench_zoo

    dataset, threat, name = spec.removeprefix("robustbench:").split("/")
    zoo = robustbench_zoo()
    (d,) = [d for d in zoo if d.value == dataset]
    (t,) = [t for t in zoo[d] if t.value == threat]
    torch.manual_seed(0)
    net = zoo[d][t][name]["model"]()
    folder = Path(folder or tempfile.mkdtemp(prefix="epsl-zoo-"))
    path = folder / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return epsl.load(spec, model_dir=folder)
