"""Model sources: checkpoints epsl did not train, named ``SOURCE:NAME`` wherever a checkpoint is.

- ``robustbench:DATASET/THREAT/NAME`` (``robustbench:cifar10/Linf/Carmon2019Unlabeled``): the
  architecture from RobustBench's model zoo, the weights from ``MODEL_DIR/DATASET/THREAT/NAME.pt``
  (RobustBench's own layout; ``MODEL_DIR`` defaults to ``./models``, as in RobustBench).
- ``timm:NAME`` (``timm:resnet18.a1_in1k``): timm's architecture, the weights from
  ``MODEL_DIR/NAME.safetensors`` or ``MODEL_DIR/NAME/model.safetensors``, else from the local
  Hugging Face cache; never the hub. Mean, std and input size come from timm's ``pretrained_cfg``.
- ``torchvision:NAME[.WEIGHTS]`` (``torchvision:resnet50.IMAGENET1K_V2``): torchvision's
  architecture, the weights from ``MODEL_DIR/<file of the weights' URL>``, by default torch hub's
  cache (``$TORCH_HOME/hub/checkpoints``). Mean, std and size come from the weights' transforms.

Every model comes back as a :class:`epsl.models.Wrapped` in eval mode: it takes pixels in [0, 1]
with its normalisation inside, and its last linear layer is its ``head`` where that holds. The
metadata names the source, the dataset, the classes, the input shape, the threat model where
known, and the weights file, whose SHA-256 keys the reuse of every result made from it.

Weights are read by epsl (:func:`epsl.models.safeload.read_weights`), never by the libraries' own
loaders, which unpickle (torchvision's and timm's ``.pth`` paths call ``torch.load`` with
``weights_only=False``; RobustBench's falls back to it when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
is set), and the libraries build architectures under :func:`epsl.models.safeload.offline`.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from epsl.errors import EpslError
from epsl.models import Wrapped, split_head
from epsl.models.safeload import offline, read_weights, state_dict_of
from epsl.registry import Registry

ZOO_INSTALL = "pip install 'epsl[zoo]'"
#: RobustBench's default model folder (``robustbench.utils.load_model(model_dir='./models')``)
ROBUSTBENCH_MODEL_DIR = Path("models")
#: RobustBench's dataset names -> epsl's registered datasets (ImageNet has none yet)
ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
ROBUSTBENCH_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


@dataclass(frozen=True)
class Source:
    """How one kind of source finds its weights file and builds its model."""

    #: (name, model_dir) -> the weights file it would read (no loading: for hashing and errors)
    weights_file: Callable[[str, Path | None], Path]
    #: (name, model_dir) -> (model taking pixels in [0, 1], metadata)
    load: Callable[[str, Path | None], tuple[nn.Module, dict[str, Any]]]
    example: str


SOURCES: Registry[Source] = Registry("model source")


def parse(spec: str | Path) -> tuple[str, str] | None:
    """``"robustbench:cifar10/Linf/X"`` -> ``("robustbench", "cifar10/Linf/X")``; None for a
    path (a string whose prefix before ``:`` is not a registered source)."""
    text = str(spec)
    prefix, sep, name = text.partition(":")
    if not sep or prefix not in SOURCES:
        return None
    if not name:
        raise EpslError(f"{text!r}: name the model, e.g. {SOURCES[prefix].example}")
    return prefix, name


def weights_file(spec: str | Path, model_dir: Path | str | None = None) -> Path:
    """The file whose bytes are ``spec``'s weights: the path itself, or where a source reads."""
    parsed = parse(spec)
    if parsed is None:
        return Path(spec)
    prefix, name = parsed
    return SOURCES[prefix].weights_file(name, None if model_dir is None else Path(model_dir))


def load(spec: str, *, model_dir: Path | str | None = None,
         device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build ``spec``'s model and read its weights: ``(model in eval mode, metadata)``."""
    parsed = parse(spec)
    if parsed is None:
        raise EpslError(f"{spec!r} is not a model source; use one of "
                        + ", ".join(SOURCES[s].example for s in SOURCES))
    prefix, name = parsed
    net, meta = SOURCES[prefix].load(name, None if model_dir is None else Path(model_dir))
    return net.to(device).eval(), {"arch": str(spec), **meta}


# --------------------------------------------------------------------------- shared helpers


def _import(module: str, what: str) -> ModuleType:
    try:
        with warnings.catch_warnings():  # import-time deprecation noise of the zoo's libraries
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise EpslError(f"{what} needs the {missing!r} module ({_short(exc)}); install it "
                        f"with: {ZOO_INSTALL}") from None


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def _missing(path: Path, what: str) -> EpslError:
    return EpslError(f"{what}: no weights file at {path.resolve()}")


def _finish(net: nn.Module, state: dict[str, torch.Tensor] | None, *, mean: Any, std: Any,
            shape: tuple[int, int, int], meta: dict[str, Any], strict: bool = True,
            what: str) -> tuple[nn.Module, dict[str, Any]]:
    if state is not None:
        try:
            net.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise EpslError(f"{what}: the weights do not fit the architecture "
                            f"({_short(exc)})") from None
    model = Wrapped(net.eval(), mean=mean, std=std).eval()
    head = split_head(model, torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)))
    norm = {"mean": [round(float(v), 6) for v in model.normalize.mean.flatten()],
            "std": [round(float(v), 6) for v in model.normalize.std.flatten()]}
    return model, {**meta, "input_shape": list(shape), "normalization": norm,
                   "penultimate": head}


# --------------------------------------------------------------------------- RobustBench


def robustbench_zoo() -> Any:
    """RobustBench's ``model_dicts`` ({dataset enum: {threat enum: {name: entry}}}).

    RobustBench 1.1.1 imports ``autoattack``, which PyPI's ``pyautoattack`` (its own declared
    dependency) installs under that name instead; the alias below is the whole workaround.
    It also imports ``pkg_resources``, hence ``setuptools<81`` in the ``zoo`` extra.
    """
    if "autoattack" not in sys.modules:
        try:
            importlib.import_module("autoattack")
        except ImportError:
            sys.modules["autoattack"] = _import("pyautoattack", "robustbench:")
    with offline():
        _import("robustbench", "robustbench:")
        zoo = _import("robustbench.model_zoo", "robustbench:")
    return zoo.model_dicts


def _robustbench_parts(name: str) -> tuple[str, str, str]:
    parts = name.split("/")
    if len(parts) != 3 or not all(parts):
        raise EpslError(f"robustbench:{name}: expected robustbench:DATASET/THREAT/NAME, e.g. "
                        "robustbench:cifar10/Linf/Carmon2019Unlabeled")
    return parts[0], parts[1], parts[2]


def _robustbench_file(name: str, model_dir: Path | None) -> Path:
    dataset, threat, model_name = _robustbench_parts(name)
    return (model_dir or ROBUSTBENCH_MODEL_DIR) / dataset / threat / f"{model_name}.pt"


def _robustbench_entry(name: str) -> tuple[Any, Any, str, dict[str, Any]]:
    dataset, threat, model_name = _robustbench_parts(name)
    zoo = robustbench_zoo()
    by_value = {d.value: d for d in zoo}
    if dataset not in by_value:
        raise EpslError(f"robustbench:{name}: unknown dataset {dataset!r}; choose from "
                        + ", ".join(sorted(by_value)))
    threats = {t.value: t for t in zoo[by_value[dataset]]}
    if threat not in threats:
        raise EpslError(f"robustbench:{name}: RobustBench has no {threat!r} models for {dataset}; "
                        "choose from " + ", ".join(sorted(threats)))
    models = zoo[by_value[dataset]][threats[threat]]
    if model_name not in models:
        close = [m for m in models if m.lower().startswith(model_name.lower()[:6])][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EpslError(f"robustbench:{name}: no model {model_name!r} in RobustBench's "
                        f"{dataset}/{threat} zoo{hint}")
    return by_value[dataset], threats[threat], model_name, models[model_name]


def robustbench_state(checkpoint: Any, model_name: str, dataset: str,
                      path: Path) -> dict[str, torch.Tensor]:
    """The state_dict RobustBench 1.1.1's ``load_model`` makes of a loaded ``.pt`` (its
    ``rm_substr_from_state_dict``/``add_substr_to_state_dict`` steps, with its own helpers):
    ``{"state_dict": ...}`` or a plain dict, ``module.`` and ``model.`` prefixes removed, and for
    ImageNet the ``model.`` prefix of its ``normalize_model`` wrapper added back."""
    utils = _import("robustbench.utils", "robustbench:")
    if not isinstance(checkpoint, dict):
        raise EpslError(f"{path}: expected a state_dict, found {type(checkpoint).__name__}")
    if "Kireev2021Effectiveness" in model_name or model_name == "Andriushchenko2020Understanding":
        checkpoint = checkpoint.get("last", checkpoint)
    inner = checkpoint.get("state_dict") if isinstance(checkpoint.get("state_dict"), dict) else None
    state = utils.rm_substr_from_state_dict(inner if inner is not None else checkpoint, "module.")
    state = utils.rm_substr_from_state_dict(state, "model.")
    if dataset == "imagenet" and model_name not in _IMAGENET_OWN_NORMALIZATION:
        state = utils.add_substr_to_state_dict(state, "model.")
    return state_dict_of(dict(state), path)


#: ImageNet models RobustBench 1.1.1 loads without adding the ``model.`` prefix
_IMAGENET_OWN_NORMALIZATION = {
    "Singh2023Revisiting_ConvNeXt-T-ConvStem", "Singh2023Revisiting_ViT-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-S-ConvStem", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-L-ConvStem", "Peng2023Robust", "Chen2024Data_WRN_50_2",
    "Xu2024MIMIR_Swin-B", "Xu2024MIMIR_Swin-L"}


def _image_size(entry: dict[str, Any], dataset: str) -> int:
    if dataset != "imagenet":
        return 32
    found = re.findall(r"(?:Crop|Res)(\d+)", str(entry.get("preprocessing", "Res256Crop224")))
    return int(found[-1]) if found else 224


def _robustbench_load(name: str, model_dir: Path | None) -> tuple[nn.Module, dict[str, Any]]:
    dataset_enum, threat_enum, model_name, entry = _robustbench_entry(name)
    dataset, threat = dataset_enum.value, threat_enum.value
    what = f"robustbench:{name}"
    gdrive = entry.get("gdrive_id")
    if isinstance(gdrive, list):
        raise EpslError(f"{what}: an ensemble of {len(gdrive)} checkpoints "
                        f"({model_name}.pt_m0.pt ...); epsl does not load ensembles yet")
    if not gdrive:
        raise EpslError(f"{what}: RobustBench takes this model's weights from a hub, not from "
                        f"{model_dir or ROBUSTBENCH_MODEL_DIR}/{dataset}/{threat}/; load it "
                        "with timm: or torchvision: instead")
    path = _robustbench_file(name, model_dir)
    if not path.is_file():
        raise _missing(path, what)
    state = robustbench_state(read_weights(path), model_name, dataset, path)
    with offline():
        try:
            net = entry["model"]()
        except OSError as exc:
            raise EpslError(f"{what}: building the architecture tried to fetch weights "
                            f"({_short(exc)})") from None
    utils = _import("robustbench.utils", "robustbench:")
    try:  # RobustBench's own rule for the checkpoints whose keys it knows not to match
        utils._safe_load_state_dict(net, model_name, state, dataset_enum)
    except RuntimeError as exc:
        raise EpslError(f"{what}: the weights do not fit the architecture ({_short(exc)})") from None
    size = _image_size(entry, dataset)
    versions = {"robustbench": _version("robustbench"), "timm": _version("timm")}
    meta = {"source": "robustbench", "name": model_name, "dataset": ROBUSTBENCH_DATASETS[dataset],
            "num_classes": ROBUSTBENCH_CLASSES[dataset], "threat_model": threat,
            "preprocessing": entry.get("preprocessing"), "weights": str(path.resolve()),
            "library_versions": versions,
            "normalization_note": "inside the RobustBench model"}
    # RobustBench's models take pixels in [0, 1] already: no normalisation in front
    return _finish(net, None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), shape=(3, size, size),
                   meta=meta, what=what)


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


SOURCES.register("robustbench")(Source(_robustbench_file, _robustbench_load,
                                       "robustbench:cifar10/Linf/Carmon2019Unlabeled"))


# --------------------------------------------------------------------------- timm


def _timm() -> Any:
    with offline():
        return _import("timm", "timm:")


def _timm_build(name: str) -> nn.Module:
    timm = _timm()
    with offline():
        try:
            return timm.create_model(name, pretrained=False)  # type: ignore[no-any-return]
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise EpslError(f"timm:{name}: {_short(exc)}") from None


def _timm_file(name: str, model_dir: Path | None, net: nn.Module | None = None) -> Path:
    if model_dir is not None:
        for path in (model_dir / f"{name}.safetensors", model_dir / name / "model.safetensors"):
            if path.is_file():
                return path
        return model_dir / f"{name}.safetensors"
    cfg = getattr(net if net is not None else _timm_build(name), "pretrained_cfg", {}) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise EpslError(f"timm:{name}: timm names no Hugging Face repository for it; pass "
                        f"the weights folder (model_dir) holding {name}.safetensors")
    hub = _import("huggingface_hub", f"timm:{name}")  # the zoo extra, never the main job's
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else []
    for filename in [*names, "model.safetensors", "pytorch_model.bin"]:
        found = hub.try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    cache = _import("huggingface_hub.constants", f"timm:{name}").HF_HUB_CACHE
    return Path(cache) / f"models--{repo.replace('/', '--')}" / "snapshots" / "*" /\
        "model.safetensors"


def _timm_load(name: str, model_dir: Path | None) -> tuple[nn.Module, dict[str, Any]]:
    what = f"timm:{name}"
    net = _timm_build(name)
    path = _timm_file(name, model_dir, net)
    if not path.is_file():
        raise _missing(path, what)
    obj = read_weights(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = state_dict_of(obj, path)
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    channels, height, width = (int(v) for v in cfg.get("input_size", (3, 224, 224)))
    if height != width:
        raise EpslError(f"{what}: non-square input size {height}x{width} is not supported")
    classes = int(getattr(net, "num_classes", cfg.get("num_classes", 0)) or 0)
    meta = {"source": "timm", "name": name, "dataset": "imagenet" if classes == 1000 else None,
            "num_classes": classes, "threat_model": None, "weights": str(path.resolve()),
            "pretrained_cfg": {k: cfg.get(k) for k in ("input_size", "crop_pct", "interpolation", "crop_mode",
                                                       "mean", "std", "hf_hub_id", "tag")},
            "library_versions": {"timm": _version("timm")}}
    return _finish(net, state, mean=cfg.get("mean", (0.485, 0.456, 0.406)),
                   std=cfg.get("std", (0.229, 0.224, 0.225)), shape=(channels, height, width),
                   meta=meta, what=what)


SOURCES.register("timm")(Source(lambda name, d: _timm_file(name, d), _timm_load,
                                "timm:resnet18.a1_in1k"))


# --------------------------------------------------------------------------- torchvision


def _torchvision_weights(name: str) -> tuple[str, Any]:
    from torchvision import models

    arch, _, tag = name.partition(".")
    try:
        enum = models.get_model_weights(arch)
    except ValueError:
        raise EpslError(f"torchvision:{name}: unknown torchvision model {arch!r}") from None
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError:
        raise EpslError(f"torchvision:{name}: {arch} has no weights {tag!r}; choose from "
                        + ", ".join(w.name for w in enum)) from None
    return arch, weights


def _torchvision_file(name: str, model_dir: Path | None) -> Path:
    _, weights = _torchvision_weights(name)
    folder = model_dir if model_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / Path(weights.url).name


def _torchvision_load(name: str, model_dir: Path | None) -> tuple[nn.Module, dict[str, Any]]:
    from unittest import mock

    from torchvision import models

    what = f"torchvision:{name}"
    arch, weights = _torchvision_weights(name)
    path = _torchvision_file(name, model_dir)
    if not path.is_file():
        raise _missing(path, what)
    state = read_weights(path)

    def safe_state(self: Any, *args: Any, **kwargs: Any) -> Any:  # instead of the URL download
        return state

    # torchvision's builder keeps its own fixes (old key names, aux heads); only the file read
    # (``WeightsEnum.get_state_dict``, a ``torch.load(weights_only=False)`` of the URL) is epsl's
    with offline(), mock.patch.object(type(weights), "get_state_dict", safe_state):
        try:
            net = models.get_model(arch, weights=weights)
        except (RuntimeError, KeyError) as exc:
            raise EpslError(f"{what}: the weights do not fit the architecture "
                            f"({_short(exc)})") from None
    transform = weights.transforms()
    size = int(getattr(transform, "crop_size", [224])[0])
    categories = list(weights.meta.get("categories") or [])
    meta = {"source": "torchvision", "name": f"{arch}.{weights.name}",
            "dataset": "imagenet" if len(categories) == 1000 else None,
            "num_classes": len(categories) or None, "threat_model": None,
            "weights": str(path.resolve()),
            "preprocessing": {"resize_size": list(getattr(transform, "resize_size", []) or []),
                              "crop_size": size,
                              "interpolation": str(getattr(transform, "interpolation", ""))},
            "library_versions": {"torchvision": _version("torchvision")}}
    return _finish(net, None, mean=transform.mean, std=transform.std, shape=(3, size, size),
                   meta=meta, what=what)


SOURCES.register("torchvision")(Source(_torchvision_file, _torchvision_load,
                                       "torchvision:resnet50.IMAGENET1K_V2"))


__all__ = ["ROBUSTBENCH_CLASSES", "ROBUSTBENCH_DATASETS", "ROBUSTBENCH_MODEL_DIR", "SOURCES",
           "Source", "ZOO_INSTALL", "load", "parse", "robustbench_state", "robustbench_zoo",
           "weights_file"]
