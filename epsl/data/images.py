"""ImageNet folders and the preprocessing that turns an image file into pixels.

``imagenet`` (registered in :data:`~epsl.data.registry.DATASETS` on import) lists the images
of ``ROOT/val/<wnid>/*.JPEG`` in torchvision's ``ImageFolder`` order without decoding any;
:func:`epsl.data.decode_images` decodes the selected ones by a :class:`Preprocessing`, the
model's own where its metadata names one (:func:`preprocessing_for`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from epsl.errors import EpslError

from .registry import DATASETS, INFOS, ImageFiles

__all__ = ["DEFAULT_CROP_PCT", "IMAGENET_CLASSES", "WNID", "Preprocessing", "preprocessing_for"]

#: timm's ``DEFAULT_CROP_PCT``: 224 / 0.875 = 256, the classic Resize(256) + CenterCrop(224)
DEFAULT_CROP_PCT = 0.875
WNID = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a C x H x W tensor in [0, 1], with torchvision's transforms:
    resize (``mode="center"``: the shorter side to ``resize``, keeping the aspect ratio;
    ``"squash"``: both sides to ``resize``; ``resize=None``: no resize), ``CenterCrop(size)``,
    ``ToTensor()``. No normalisation: that is inside the model."""

    size: int = 224
    resize: int | None = 256
    interpolation: str = "bilinear"
    mode: str = "center"

    def __str__(self) -> str:
        crop = f"CenterCrop({self.size}) + ToTensor()"
        if self.resize is None:
            return crop
        side = self.resize if self.mode == "center" else (self.resize, self.resize)
        return f"Resize({side}, {self.interpolation}) + {crop}"

    def transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision import transforms

        if self.mode not in ("center", "squash"):
            raise EpslError(f"preprocessing crop mode {self.mode!r} is not supported (only "
                            "'center' and 'squash', as timm names them)")
        if self.interpolation not in _INTERPOLATIONS:
            raise EpslError(f"preprocessing interpolation {self.interpolation!r} is not one of "
                            f"{', '.join(_INTERPOLATIONS)}")
        steps: list[Any] = []
        if self.resize is not None:
            side = self.resize if self.mode == "center" else (self.resize, self.resize)
            steps.append(transforms.Resize(
                side, interpolation=transforms.InterpolationMode(self.interpolation)))
        steps += [transforms.CenterCrop(self.size), transforms.ToTensor()]
        return transforms.Compose(steps)  # type: ignore[no-any-return]


def _interpolation(value: Any) -> str:
    # torchvision records "InterpolationMode.BILINEAR", timm "bicubic"
    return str(value or "bilinear").rsplit(".", 1)[-1].lower()


def preprocessing_for(meta: Mapping[str, Any] | None) -> Preprocessing:
    """The preprocessing a model's metadata asks for, first match wins:

    - timm's ``pretrained_cfg`` (``input_size``, ``crop_pct``, ``interpolation``, ``crop_mode``):
      as ``timm.data.transforms_imagenet_eval`` computes it, ``resize = floor(size / crop_pct)``;
    - torchvision's ``preprocessing`` (``resize_size``, ``crop_size``, ``interpolation``);
    - RobustBench's ``preprocessing`` name (``Res256Crop224``, ``BicubicRes256Crop224``,
      ``Crop288``, ``Res224``: squash to 224 x 224);
    - the model's ``input_shape`` (C, S, S): ``CenterCrop(S)`` after ``Resize(floor(S / 0.875))``;
    - otherwise ``Resize(256) + CenterCrop(224)``, bilinear.
    """
    meta = meta or {}
    cfg = meta.get("pretrained_cfg")
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        size = int(cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)
        return Preprocessing(size=size, resize=math.floor(size / crop_pct),
                             interpolation=_interpolation(cfg.get("interpolation")),
                             mode=str(cfg.get("crop_mode") or "center"))
    given = meta.get("preprocessing")
    if isinstance(given, Mapping) and given.get("crop_size"):
        sizes = list(given.get("resize_size") or [])
        return Preprocessing(size=int(given["crop_size"]), resize=int(sizes[0]) if sizes else None,
                             interpolation=_interpolation(given.get("interpolation")))
    if isinstance(given, str):
        named = re.fullmatch(r"(Bicubic)?(?:Res(\d+))?(?:Crop(\d+))?", given)
        if named and (named.group(2) or named.group(3)):
            resize = int(named.group(2)) if named.group(2) else None
            crop = int(named.group(3)) if named.group(3) else None
            return Preprocessing(size=crop or int(resize or 224), resize=resize,
                                 interpolation="bicubic" if named.group(1) else "bilinear",
                                 mode="center" if crop else "squash")
    shape = meta.get("input_shape")
    if isinstance(shape, Sequence) and len(shape) == 3 and shape[1] == shape[2]:
        size = int(shape[-1])
        return Preprocessing(size=size, resize=math.floor(size / DEFAULT_CROP_PCT))
    return Preprocessing()



def _image_folder(data_root: Path, split: str) -> Path:
    """``ROOT/val`` (``ROOT/train``), or ROOT itself where it holds the wnid folders."""
    if not data_root.is_dir():
        raise EpslError(f"data_root={data_root}: no such folder")
    folder = data_root / ("val" if split == "test" else "train")
    if folder.is_dir():
        return folder
    if split == "test" and any(p.is_dir() and WNID.fullmatch(p.name) for p in data_root.iterdir()):
        return data_root
    raise EpslError(f"{data_root}: not an ImageNet folder (expected {folder}/<wnid>/*.JPEG, one "
                    "folder per WordNet id such as n01440764, as torchvision's ImageFolder reads)")


@DATASETS.register("imagenet")
def _imagenet(split: str, data_root: Path | None, download: bool) -> ImageFiles:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if download:
        raise EpslError("imagenet cannot be downloaded (image-net.org asks for a sign-up); drop "
                        "download=True and pass data_root=DIR holding val/<wnid>/*.JPEG")
    if data_root is None:
        raise EpslError("imagenet needs data_root=DIR holding val/<wnid>/*.JPEG (the ILSVRC2012 "
                        "validation images in one folder per WordNet id)")
    folder = _image_folder(data_root, split)
    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:  # torchvision: "Couldn't find any class folder in ..."
        classes, class_to_idx = [], {}
    strange = [name for name in classes if not WNID.fullmatch(name)]
    if strange:
        raise EpslError(f"{folder / strange[0]}: not a WordNet id (n and 8 digits, such as "
                        f"n01440764); {folder} may hold only the {IMAGENET_CLASSES} class folders")
    if len(classes) != IMAGENET_CLASSES:
        raise EpslError(f"{folder}: {len(classes)} class folders, ImageNet has "
                        f"{IMAGENET_CLASSES} (a class index is its wnid's place in sorted order, "
                        "so every wnid folder must be there; it may be empty)")
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise EpslError(f"{folder}: the {IMAGENET_CLASSES} class folders hold no images "
                        f"({', '.join(IMG_EXTENSIONS)})")
    return ImageFiles(tuple(samples), INFOS["imagenet"], split, str(folder))
