#!/usr/bin/env bash
# The wheel is whole: built from the tree, installed WITHOUT -e into a new venv (with the zoo
# extra, as docs/sources.md tells a user), then used from a folder outside the source tree:
# train and diagnose a digits model, import every module, and diagnose a RobustBench model
# (random weights in RobustBench's layout) in a process with no network at all (unshare -n).
# Usage: .ci/check_wheel.sh SOURCE_TREE BUILD_PYTHON SCRATCH
set -euo pipefail
tree=$1 build_python=$2 scratch=$3
mkdir -p "$scratch/dist" "$scratch/outside"
"$build_python" -m pip wheel --no-deps --no-build-isolation -q -w "$scratch/dist" "$tree"
wheel=$(ls "$scratch"/dist/epsl-*.whl)
python3 -m venv "$scratch/wheel-venv"
venv=$scratch/wheel-venv/bin
"$venv/pip" install -q torch==2.14.1 torchvision==0.29.1
"$venv/pip" install -q "$wheel[zoo]"
cd "$scratch/outside"
"$venv/epsl" train --dataset digits --arch small-cnn --steps 40 --seed 0 --out m.safetensors
"$venv/epsl" diagnose m.safetensors --limit 64 --out diag
test -s diag/diagnostics.csv && test -s diag/diagnostics.json
"$venv/python" - <<'PY'
import importlib, pkgutil, sys
import epsl
assert "site-packages" in epsl.__file__, epsl.__file__
names = [m.name for m in pkgutil.walk_packages(epsl.__path__, "epsl.") if m.name != "epsl.__main__"]
for name in names:
    importlib.import_module(name)
assert {"epsl.diagnostics.margins", "epsl.cli.main", "epsl.analysis.figures",
        "epsl.models.sources"} <= set(names), names
print(f"wheel: {len(names)} modules import from {epsl.__file__}")
# a RobustBench model in RobustBench's layout (random weights) and CIFAR-shaped inputs
import numpy as np, torch
from epsl.models.sources import robustbench_zoo
zoo = robustbench_zoo()
(d,) = [d for d in zoo if d.value == "cifar10"]
(t,) = [t for t in zoo[d] if t.value == "Linf"]
net = zoo[d][t]["Wong2020Fast"]["model"]()
import os
os.makedirs("models/cifar10/Linf", exist_ok=True)
torch.save({k: v for k, v in net.state_dict().items() if k not in ("mu", "sigma")},
           "models/cifar10/Linf/Wong2020Fast.pt")
np.savez("cifar.npz", x=np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32),
         y=np.arange(8))
PY
unshare -n "$venv/epsl" diagnose robustbench:cifar10/Linf/Wong2020Fast --model-dir models \
  --data cifar.npz --eps 8/255 --out rb
test -s rb/diagnostics.csv
echo "wheel check passed: $(basename "$wheel")"
