"""Reading weights that epsl did not write: safely, and never over the network.

Every foreign weights file goes through :func:`read_weights`: safetensors, or
``torch.load(weights_only=True)``, which builds tensors and plain containers only and refuses
anything that would import or run code. The explicit ``weights_only=True`` also holds when
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set (that variable only changes torch's default), so
unlike RobustBench's own loader epsl cannot be switched into full unpickling.

:func:`offline` is held while a model library builds an architecture: Hugging Face and timm are
told to stay offline, and any socket connection fails at once, so a library that would fetch
weights (``pretrained=True`` deep inside a factory) fails instead of downloading.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from epsl.errors import EpslError

#: Environment variables that keep Hugging Face's hub (used by timm) from reaching the network;
#: without them timm retries the hub for about a minute before it fails.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class NetworkRefused(OSError):
    """Raised by any socket connection attempted while :func:`offline` is held."""


#: what epsl says instead of torch's advice: how to make a file that loads safely
SAFE_FORMATS = ("re-save the weights with the code that made them, as .safetensors "
                "(safetensors.torch.save_file(model.state_dict(), PATH)) or as a plain state_dict "
                "of tensors (torch.save(model.state_dict(), PATH))")
# torch's messages offer weights_only=False or allow-listing a class "if you trust" it, the
# unpickling epsl never does: the reason is the part after this marker, the advice is cut off
_UNPICKLER = "WeightsUnpickler error:"
_ADVICE = re.compile(r"\s*(Please use `torch\.serialization|Check the documentation).*", re.S)
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def _short(exc: BaseException) -> str:
    """The first line of ``exc``, with none of torch's advice to load unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds its warning on terminals
    if _UNPICKLER in text:
        text = text.split(_UNPICKLER, 1)[1]
    lines = [line.strip() for line in _ADVICE.sub("", text).splitlines() if line.strip()]
    reason = lines[0][:200] if lines else ""
    return type(exc).__name__ if not reason or "weights_only" in reason else reason


def unsafe_globals(path: Path | str) -> list[str]:
    """The classes and functions a pickled checkpoint would import to be loaded (what
    ``weights_only=True`` refuses), read without unpickling anything."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - a file torch cannot even scan names nothing
        return []


def numpy_numbers() -> list[Any]:
    """numpy scalars and their dtypes, which many published checkpoints hold beside the weights
    (``"epoch": np.int64(...)``): they rebuild plain numbers and run nothing, so they are
    allowed (torch's documented recipe); every other global is still refused."""
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    dtypes = [t for t in vars(np.dtypes).values() if isinstance(t, type)]
    return [multiarray.multiarray.scalar, np.dtype, *dtypes]


def read_weights(path: Path | str) -> Any:
    """The object stored in a weights file: a dict of tensors from ``.safetensors``, or what
    ``torch.load(weights_only=True)`` builds (tensors, dicts, lists, numbers, strings).

    Raises :class:`EpslError` in one line naming ``path`` when the file is missing, is not a
    weights file, or would build arbitrary objects (naming them) — nothing in it ever runs.
    """
    path = Path(path)
    if not path.is_file():
        raise EpslError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EpslError(f"{path}: not a readable safetensors file ({_short(exc)})") from None
    try:
        with torch.serialization.safe_globals(numpy_numbers()), warnings.catch_warnings():
            # its note on pickle protocols would be a second line before the one that matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, zip errors
        names = unsafe_globals(path) if isinstance(exc, pickle.UnpicklingError) else []
        names = names or _REFUSED_GLOBAL.findall(str(exc))
        if names:
            raise EpslError(f"{path}: refused to load: it would build "
                            + ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
                            + f"; epsl never unpickles code: {SAFE_FORMATS}") from None
        # torch's legacy reader meets a file it did not write as a KeyError of its first bytes
        reason = "not written by torch.save" if isinstance(exc, KeyError) else _short(exc)
        raise EpslError(f"{path}: refused to load: not a plain tensor state_dict "
                        f"({reason}); {SAFE_FORMATS}") from None


def state_dict_of(obj: Any, path: Path | str) -> dict[str, torch.Tensor]:
    """``obj`` as a flat name -> tensor dict, or one line saying what the file holds instead."""
    if not isinstance(obj, dict) or not obj:
        raise EpslError(f"{path}: expected a state_dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise EpslError(f"{path}: expected a state_dict of tensors, but {bad[0]!r} is a "
                        f"{type(obj[bad[0]]).__name__}")
    return obj


@contextmanager
def offline() -> Iterator[None]:
    """Hold the process offline: hub libraries told so, and every socket connection refused."""
    saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    saved = socket.socket.connect, socket.socket.connect_ex, socket.create_connection

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NetworkRefused("epsl loads models offline; a library tried to reach the network")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection = saved  # type: ignore[method-assign,assignment]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


__all__ = ["NetworkRefused", "OFFLINE_ENV", "SAFE_FORMATS", "numpy_numbers", "offline",
           "read_weights", "state_dict_of", "unsafe_globals"]
