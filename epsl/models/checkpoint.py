"""Safe checkpoints: safetensors weights plus JSON metadata, never pickle.

Metadata (stored in the safetensors header under the key ``epsl``) holds the architecture
and its arguments, the dataset, input shape, classes, normalisation, the full training config,
steps done, clean train/test accuracy and the epsl version. A foreign ``.pt``/``.pth``
state_dict loads with ``torch.load(weights_only=True)`` and an ``arch``; a user's own model
comes from ``module:factory``; a zoo model from a source (:mod:`epsl.models.sources`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from epsl.data import DatasetInfo, dataset_info
from epsl.errors import EpslError
from epsl.models import MODELS, create_model, sources
from epsl.models.safeload import read_weights, state_dict_of
from epsl.results.files import atomic_path
from epsl.version import __version__

METADATA_KEY = "epsl"


def model_kwargs_for(dataset: str | DatasetInfo, **extra: Any) -> dict[str, Any]:
    """The constructor arguments every factory takes (``in_channels, num_classes, input_size,
    mean, std``), filled from a registered dataset's name or a loaded split's info; ``extra``
    adds arguments or overrides them."""
    info = dataset_info(dataset) if isinstance(dataset, str) else dataset
    return {"in_channels": info.shape[0], "num_classes": info.num_classes,
            "input_size": info.shape[1], "mean": list(info.mean), "std": list(info.std), **extra}


def save(path: Path | str, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s state_dict and ``metadata`` (JSON-able) atomically as safetensors."""
    path = Path(path)
    meta = {"epsl_version": __version__, **metadata}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The JSON metadata of an epsl safetensors checkpoint, without loading its weights."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise EpslError(f"{path}: not a readable safetensors file ({_short(exc)})") from None
    if raw is None:
        return {}
    try:
        meta: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError:
        raise EpslError(f"{path}: checkpoint metadata is not valid JSON") from None
    return meta


def _existing(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise EpslError(f"{path}: no such checkpoint")
    return path


def weights_file(checkpoint: Path | str, model_dir: Path | str | None = None) -> Path:
    """The file holding ``checkpoint``'s weights (itself, or where a model source reads them),
    whose SHA-256 keys every result made from it."""
    return sources.weights_file(checkpoint, model_dir)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _load_factory(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise EpslError(f"model={spec!r}: expected 'package.module:factory'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # a user's own module beside them, as `python -m` finds it
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise EpslError(f"model={spec!r}: cannot import ({_short(exc)})") from None


def _build_from_factory(spec: str, kwargs: dict[str, Any]) -> Any:
    """Call the user's ``module:factory``; any failure in user code is one clear error."""
    factory = _load_factory(spec)
    if not callable(factory):
        raise EpslError(f"model={spec!r}: {type(factory).__name__} object is not callable; "
                        "name a function or class that returns a torch.nn.Module")
    try:
        return factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        raise EpslError(f"model={spec!r}: the factory failed ({type(exc).__name__}: "
                        f"{_short(exc)})") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    obj = read_weights(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return {k.removeprefix("module."): v for k, v in state_dict_of(obj, path).items()}


def load(path: Path | str, *, arch: str | None = None, model: str | None = None,
         dataset: str | None = None, arch_kwargs: dict[str, Any] | None = None,
         model_dir: Path | str | None = None,
         device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint: ``(model in eval mode, metadata)``; it never unpickles code.

    An epsl ``.safetensors`` file rebuilds its own architecture from metadata. A foreign
    ``.pt``/``.pth``/``.safetensors`` state_dict needs ``arch`` (a registered architecture,
    built for ``dataset``, default ``digits``) or ``model`` (``package.module:factory``).
    A model source (:mod:`epsl.models.sources`) names a zoo model instead of a path:
    ``"robustbench:cifar10/Linf/Carmon2019Unlabeled"``, ``"timm:resnet18.a1_in1k"`` or
    ``"torchvision:resnet50"``, with its weights under ``model_dir``.

    >>> model, meta = epsl.load("robustbench:cifar10/Linf/Standard", model_dir="models")
    """
    if sources.parse(path) is not None:
        if arch is not None or model is not None:
            raise EpslError(f"{path}: a model source builds its own architecture; drop arch "
                            "and model")
        return sources.load(str(path), model_dir=model_dir, device=device)
    path = _existing(path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    recorded = meta.get("arch")  # what the file says it is, before arch overrides it
    state = _read_state(path)
    if model is not None:
        net = _build_from_factory(model, arch_kwargs or {})
        meta = {**meta, "arch": model, "arch_kwargs": arch_kwargs or {}}
    else:
        name = arch or meta.get("arch")
        if name is None:
            raise EpslError(f"{path}: no epsl metadata; pass arch=NAME or model=module:factory")
        kwargs = meta.get("arch_kwargs") if arch is None or arch == meta.get("arch") else None
        if kwargs is None:
            kwargs = model_kwargs_for(dataset or meta.get("dataset") or "digits",
                                      **(arch_kwargs or {}))
            meta = {**meta, "arch": name, "arch_kwargs": kwargs,
                    "dataset": meta.get("dataset", dataset)}
        try:
            net = create_model(name, **kwargs)
        except (TypeError, ValueError) as exc:
            raise EpslError(f"{path}: cannot build {name!r} ({_short(exc)})") from None
    if not isinstance(net, nn.Module):
        raise EpslError(f"{path}: the factory did not return a torch.nn.Module")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = misfit(state, net) or _short(exc)
        hint = "" if model is not None else _arch_hint(path, state, meta, recorded)
        raise EpslError(f"{path}: weights do not fit architecture {meta.get('arch')!r} "
                        f"({detail}){hint}") from None
    if model is not None or "normalization" not in meta:
        meta = _with_loaded_normalization(meta, net)
    net.to(device).eval()
    return net, meta


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def misfit(state: dict[str, torch.Tensor], net: nn.Module) -> str:
    """Why ``state`` does not load into ``net``, in one line: how many tensors are missing
    and unexpected (the first few named), and the first whose shape differs ("" when they
    fit)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    parts = [f"{len(names)} {label}: {_names(names)}"
             for label, names in (("missing", missing), ("unexpected", unexpected)) if names]
    for key, tensor in expected.items():
        if key in state and state[key].shape != tensor.shape:
            parts.append(f"{key} is {'x'.join(map(str, state[key].shape)) or 'a scalar'} in the "
                         f"file, {'x'.join(map(str, tensor.shape)) or 'a scalar'} in the model")
            break
    return "; ".join(parts)


def fitting_architectures(state: dict[str, torch.Tensor], dataset: str) -> list[str]:
    """The registered architectures whose tensors bear the names of ``state``'s, those whose
    shapes match too first (each built for ``dataset`` on the meta device: nothing is
    allocated; another width or depth changes the shapes, not the names)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    same: list[str] = []
    named: list[str] = []
    for name in MODELS.names():
        try:
            with torch.device("meta"):
                built = create_model(name, **model_kwargs_for(dataset)).state_dict()
        except Exception:  # noqa: BLE001 - an architecture that cannot be built here fits nothing
            continue
        if set(built) == set(shapes):
            fits = all(tuple(v.shape) == shapes[k] for k, v in built.items())
            (same if fits else named).append(name)
    return same + named


def _arch_hint(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any],
               recorded: str | None) -> str:
    """What to pass instead: the architecture the file's metadata names, else those whose
    tensor names match (``"; ..."``, or "" when none is known)."""
    if recorded is not None and recorded != meta.get("arch"):
        return f"; its metadata says it is {recorded!r}, which loads without arch=NAME"
    names = fitting_architectures(state, meta.get("dataset") or "digits")
    if names:
        return f"; its tensor names are those of {' or '.join(names)}: pass arch={names[0]}"
    return (f"; no registered architecture has its tensor names: pass model=module:factory "
            f"for your own (see `epsl info {path}`)")


def _with_loaded_normalization(meta: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """``meta`` with the mean/std buffers actually loaded from the weights (a foreign
    state_dict brings its own; the dataset's defaults were only the starting values)."""
    norm = getattr(net, "normalize", None)
    mean, std = getattr(norm, "mean", None), getattr(norm, "std", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        return meta
    loaded = {"mean": [round(float(v), 6) for v in mean.flatten()],
              "std": [round(float(v), 6) for v in std.flatten()]}
    kwargs = meta.get("arch_kwargs")
    if isinstance(kwargs, dict) and "mean" in kwargs and "std" in kwargs:
        meta = {**meta, "arch_kwargs": {**kwargs, **loaded}}
    return {**meta, "normalization": loaded}


def check_finished(meta: dict[str, Any], path: Path | str = "checkpoint") -> None:
    """Refuse, for evaluation, a checkpoint whose training did not finish (``complete: false``
    in its metadata: an interrupted or diverged ``epsl train``): its numbers would be taken
    for the trained model's. A checkpoint without the key (foreign, a model source, hand-made)
    passes."""
    if meta.get("complete", True) is not False:
        return
    config = meta.get("train_config")
    config = config if isinstance(config, dict) else {}
    if config.get("steps") is not None:
        done = f"step {meta.get('steps_done', '?')} of {config['steps']}"
    else:
        done = f"epoch {meta.get('epochs_done', '?')} of {config.get('epochs', '?')}"
    raise EpslError(f"{path} is an unfinished training checkpoint ({done}): finish it with "
                    f"`epsl train` and the options it was started with plus `--out {path} "
                    "--resume`, then evaluate it")


def check_dataset(meta: dict[str, Any], shape: tuple[int, ...], num_classes: int,
                  path: str = "checkpoint") -> None:
    """Raise a clear error when a checkpoint's input shape or classes do not fit the data."""
    expected = meta.get("input_shape")
    if expected is not None and tuple(expected) != tuple(shape):
        raise EpslError(f"{path} expects inputs of shape {tuple(expected)} but the data has "
                        f"{tuple(shape)}")
    classes = meta.get("num_classes")
    if classes is not None and num_classes > int(classes):
        raise EpslError(f"{path} has {classes} classes but the data has labels up to "
                        f"{num_classes - 1}")


__all__ = ["METADATA_KEY", "check_dataset", "check_finished", "fitting_architectures", "load",
           "misfit", "model_kwargs_for", "read_metadata", "save", "weights_file"]
