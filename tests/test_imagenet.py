"""ImageNet validation folders and seeded samples against independent references: class
indices from torchvision's ``ImageFolder``, pixels from torchvision's transforms, timm's
``create_transform`` and RobustBench's ``PREPROCESSINGS``; bad folders are one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from epsl.cli.main import main
from epsl.data import (
    ImageFiles,
    Preprocessing,
    decode_images,
    load_split,
    preprocessing_for,
    sample_indices,
)
from epsl.errors import EpslError
from epsl.models import checkpoint, create_model
from epsl.runs.context import DataConfig

#: (class index, file stem, width, height, PIL mode): sizes above and below 256, both ratios
IMAGES = [(0, "a", 300, 260, "RGB"), (0, "b", 500, 375, "RGB"), (1, "c", 240, 320, "RGB"),
          (1, "d", 257, 257, "L"), (2, "e", 400, 200, "RGB"), (2, "f", 180, 300, "RGB")]


def wnids() -> list[str]:
    """1000 distinct WordNet-style ids, written in an order that is not the sorted one."""
    numbers = np.random.default_rng(0).choice(10**8, size=1000, replace=False)
    return [f"n{int(v):08d}" for v in numbers]


def write_val(root: Path) -> Path:
    """``root/val`` in ImageNet's layout: 1000 wnid folders, six JPEGs in the first three."""
    val = root / "val"
    names = wnids()
    for name in names:
        (val / name).mkdir(parents=True)
    classes = sorted(names)
    rng = np.random.default_rng(1)
    for index, stem, width, height, mode in IMAGES:
        ramp = np.linspace(0, 255, width)[None, :, None] + np.linspace(0, 120, height)[:, None, None]
        pixels = np.clip(ramp + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        image.save(val / classes[index] / f"ILSVRC2012_val_{stem}.JPEG", quality=90)
    return val


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    write_val(root)
    return root


def _reference(val: Path, transform) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(val), transform=transform, allow_empty=True)
    x, y = zip(*(folder[i] for i in range(len(folder))), strict=True)
    return torch.stack(x), torch.tensor(y)


def _without_normalize(transform):
    from torchvision import transforms

    *steps, last = transform.transforms
    assert isinstance(last, transforms.Normalize)  # epsl normalises inside the model
    return transforms.Compose(steps)


def test_classes_and_pixels_are_torchvision_imagefolders(imagenet_root: Path) -> None:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    val = imagenet_root / "val"
    folder = ImageFolder(str(val), allow_empty=True)
    assert len(folder.classes) == 1000 and folder.classes == sorted(wnids())
    x_ref, y_ref = _reference(val, transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]))
    for root in (imagenet_root, val):  # ROOT or ROOT/val itself
        data = load_split("imagenet", "test", data_root=root)
        assert data.y.tolist() == [t for _, t in folder.samples] == [0, 0, 1, 1, 2, 2]
        assert data.x.dtype == torch.float32 and torch.equal(data.x, x_ref)
        assert torch.equal(data.y, y_ref)
        assert data.info.name == "imagenet" and data.info.num_classes == 1000
        assert data.info.shape == (3, 224, 224) and data.source == str(val)
        assert data.transform == "Resize(256, bilinear) + CenterCrop(224) + ToTensor()"


@pytest.mark.parametrize("cfg", [
    None,  # the real timm:test_vit.r160_in1k through epsl.models.sources: 160, bicubic, 0.875
    {"input_size": (3, 192, 192), "crop_pct": 0.95, "interpolation": "bilinear"},
    {"input_size": (3, 200, 200), "crop_pct": 1.0, "interpolation": "bicubic",
     "crop_mode": "squash"},
], ids=["test_vit-from-source", "crop-0.95", "squash"])
def test_timm_cfg_pixels_are_timms_create_transform(imagenet_root: Path, tmp_path: Path,
                                                    cfg: dict | None) -> None:
    import timm
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config

    import epsl

    if cfg is None:
        net = timm.create_model("test_vit", pretrained=False)
        save_file(net.state_dict(), str(tmp_path / "test_vit.r160_in1k.safetensors"))
        _, meta = epsl.load("timm:test_vit.r160_in1k", model_dir=tmp_path)
        config = resolve_data_config({}, model=net)
    else:
        meta = {"pretrained_cfg": cfg}
        config = resolve_data_config({}, pretrained_cfg=cfg)
    preprocessing = preprocessing_for(meta)
    data = load_split("imagenet", data_root=imagenet_root, preprocessing=preprocessing)
    x_ref, _ = _reference(imagenet_root / "val", _without_normalize(create_transform(**config)))
    size = config["input_size"][-1]
    assert data.x.shape == (6, 3, size, size) and data.info.shape == (3, size, size)
    assert torch.equal(data.x, x_ref)
    assert data.transform == str(preprocessing) and f"CenterCrop({size})" in data.transform


def test_torchvision_weights_preprocessing_is_their_transforms(imagenet_root: Path) -> None:
    from torchvision.models import ResNet50_Weights
    from torchvision.transforms._presets import ImageClassification

    transform = ResNet50_Weights.IMAGENET1K_V2.transforms()  # Resize(232) + CenterCrop(224)
    meta = {"preprocessing": {"resize_size": list(transform.resize_size),
                              "crop_size": transform.crop_size[0],
                              "interpolation": str(transform.interpolation)}}  # as sources.py
    plain = ImageClassification(crop_size=transform.crop_size[0],
                                resize_size=transform.resize_size[0],
                                interpolation=transform.interpolation, mean=(0, 0, 0), std=(1, 1, 1))
    data = load_split("imagenet", data_root=imagenet_root, preprocessing=preprocessing_for(meta))
    x_ref, _ = _reference(imagenet_root / "val", plain)
    assert data.transform == "Resize(232, bilinear) + CenterCrop(224) + ToTensor()"
    torch.testing.assert_close(data.x, x_ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["Res256Crop224", "BicubicRes256Crop224", "Crop288", "Res224"])
def test_robustbench_preprocessing_names_are_robustbenchs(imagenet_root: Path, name: str) -> None:
    import importlib

    from epsl.models.sources import robustbench_zoo

    robustbench_zoo()  # RobustBench imports under epsl's alias of its autoattack dependency
    robustbench_data = importlib.import_module("robustbench.data")
    data = load_split("imagenet", data_root=imagenet_root,
                      preprocessing=preprocessing_for({"preprocessing": name}))
    x_ref, _ = _reference(imagenet_root / "val", robustbench_data.PREPROCESSINGS[name])
    assert torch.equal(data.x, x_ref)


@pytest.mark.parametrize("meta, expected", [
    ({}, Preprocessing(224, 256)),
    ({"input_shape": [3, 32, 32]}, Preprocessing(32, 36)),  # floor(32 / 0.875)
    ({"pretrained_cfg": {"input_size": [3, 288, 288], "crop_pct": 1.0,
                         "interpolation": "bicubic"}}, Preprocessing(288, 288, "bicubic")),
    ({"pretrained_cfg": {"input_size": [3, 224, 224], "crop_pct": 0.9}}, Preprocessing(224, 248)),
])
def test_preprocessing_rule(meta: dict, expected: Preprocessing) -> None:
    assert preprocessing_for(meta) == expected


def test_sample_is_seeded_sorted_and_the_split_rows(imagenet_root: Path) -> None:
    full = load_split("imagenet", data_root=imagenet_root)
    first = load_split("imagenet", data_root=imagenet_root, sample=3, sample_seed=0)
    again = load_split("imagenet", data_root=imagenet_root, sample=3, sample_seed=0)
    other = load_split("imagenet", data_root=imagenet_root, sample=3, sample_seed=2)
    assert torch.equal(first.x, again.x) and torch.equal(first.indices, again.indices)
    assert first.indices.tolist() != other.indices.tolist()
    for part in (first, other):
        rows = part.indices
        assert rows.tolist() == sorted(rows.tolist()) and len(set(rows.tolist())) == 3
        assert torch.equal(part.x, full.x[rows]) and torch.equal(part.y, full.y[rows])
        assert part.sample == 3 and part.transform == full.transform
    assert first.sample_seed == 0 and other.sample_seed == 2
    assert first.indices.tolist() == sample_indices(6, 3, 0).tolist()
    limited = load_split("imagenet", data_root=imagenet_root, limit=2)
    assert torch.equal(limited.x, full.x[:2]) and limited.sample is None


def test_sample_works_for_in_memory_datasets() -> None:
    full = load_split("digits", "test")
    part = load_split("digits", "test", sample=50, sample_seed=7)
    rows = torch.from_numpy(np.sort(np.random.default_rng(7).choice(len(full), 50, replace=False)))
    assert torch.equal(part.indices, rows)
    assert torch.equal(part.x, full.x[rows]) and torch.equal(part.y, full.y[rows])
    assert torch.equal(part.subset(10).indices, rows[:10])
    assert not torch.equal(load_split("digits", "test", sample=50, sample_seed=8).indices, rows)


def test_workers_decode_the_same_pixels(imagenet_root: Path) -> None:
    from epsl.data import DATASETS

    files = DATASETS["imagenet"]("test", imagenet_root, False)
    assert isinstance(files, ImageFiles) and len(files) == 6
    here = decode_images(files, [1, 4, 5], Preprocessing(), workers=0)
    there = decode_images(files, [1, 4, 5], Preprocessing(), workers=2, batch_size=2)
    assert torch.equal(here.x, there.x) and here.y.tolist() == there.y.tolist() == [0, 2, 2]


# --------------------------------------------------------------------------- bad input


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _damaged(tmp_path: Path, damage: str) -> Path:
    val = write_val(tmp_path)
    classes = sorted(p.name for p in val.iterdir())
    if damage == "no-val":
        (tmp_path / "other").mkdir()
        return tmp_path / "other"
    if damage == "999-classes":
        (val / classes[-1]).rmdir()
    elif damage == "not-a-wnid":
        (val / "cats").mkdir()
    elif damage == "bad-image":
        (val / classes[1] / "ILSVRC2012_val_zz.JPEG").write_bytes(b"not a jpeg at all")
    elif damage == "no-images":
        for path in val.glob("*/*.JPEG"):
            path.unlink()
    return tmp_path


@pytest.mark.parametrize("damage, message", [
    ("no-val", "not an ImageNet folder"),
    ("999-classes", "999 class folders, ImageNet has 1000"),
    ("not-a-wnid", "cats: not a WordNet id"),
    ("bad-image", "ILSVRC2012_val_zz.JPEG: cannot decode the image"),
    ("no-images", "hold no images"),
])
def test_bad_folders_are_one_line_errors(tmp_path: Path, damage: str, message: str) -> None:
    root = _damaged(tmp_path, damage)
    with pytest.raises(EpslError, match=message) as info:
        load_split("imagenet", "test", data_root=root)
    _one_line(info)


def test_one_more_wnid_folder_is_refused(tmp_path: Path) -> None:
    val = write_val(tmp_path)
    extra = next(f"n{v:08d}" for v in range(10**8) if not (val / f"n{v:08d}").exists())
    (val / extra).mkdir()
    with pytest.raises(EpslError, match="1001 class folders") as info:
        load_split("imagenet", "test", data_root=tmp_path)
    _one_line(info)


def test_a_bad_image_in_a_worker_is_one_line(tmp_path: Path) -> None:
    from epsl.data import DATASETS

    root = _damaged(tmp_path, "bad-image")
    files = DATASETS["imagenet"]("test", root, False)
    with pytest.raises(EpslError, match="ILSVRC2012_val_zz.JPEG: cannot decode") as info:
        decode_images(files, range(len(files)), Preprocessing(), workers=2, batch_size=2)
    _one_line(info)


@pytest.mark.parametrize("options, message", [
    ({"sample": 7}, "sample=7 is more than the 6 examples"),
    ({"sample": 2, "limit": 2}, "not both"),
    ({"sample": 0}, "sample must be at least 1"),
    ({"sample": 2, "sample_seed": -1}, "sample_seed must be a non-negative integer"),
    ({"download": True}, "cannot be downloaded"),
], ids=["sample-too-large", "limit-and-sample", "sample-zero", "negative-seed", "download"])
def test_bad_selections_are_one_line_errors(imagenet_root: Path, options: dict,
                                            message: str) -> None:
    with pytest.raises(EpslError, match=message) as info:
        load_split("imagenet", "test", data_root=imagenet_root, **options)
    _one_line(info)


def test_a_selection_larger_than_half_the_memory_is_refused(imagenet_root: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("epsl.data._memory_available", lambda: 6 * 3 * 224 * 224 * 4)
    with pytest.raises(EpslError, match="more than half the memory available.*limit=N or "
                                        "sample=N") as info:
        load_split("imagenet", "test", data_root=imagenet_root)
    _one_line(info)
    assert len(load_split("imagenet", "test", data_root=imagenet_root, sample=3)) == 3


def test_data_config_refuses_limit_with_sample() -> None:
    with pytest.raises(EpslError, match="not both"):
        DataConfig(limit=5, sample=5)
    assert DataConfig(sample=5, sample_seed=3).sample_seed == 3


def test_cifar_pickle_is_never_unpickled_without_its_checksum(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:  # what a malicious test_batch would carry
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(EpslError, match="cifar10 not found under") as info:
        load_split("cifar10", "test", data_root=tmp_path)
    _one_line(info)
    assert not marker.exists()  # torchvision compared the md5 before any pickle.load


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 1000-class MLP on 32 x 32 inputs: ImageNet decoded by Resize(36) + CenterCrop(32)."""
    kwargs = {**checkpoint.model_kwargs_for("imagenet"), "input_size": 32, "hidden": 4, "depth": 1}
    torch.manual_seed(0)
    net = create_model("mlp", **kwargs)
    path = tmp_path_factory.mktemp("ckpt") / "imagenet-mlp.safetensors"
    checkpoint.save(path, net, {"arch": "mlp", "arch_kwargs": kwargs, "dataset": "imagenet",
                                "input_shape": [3, 32, 32], "num_classes": 1000})
    return path


def _diagnose(*args: object):
    return CliRunner().invoke(main, ["diagnose", *(str(a) for a in args)])


def test_cli_diagnose_on_a_sample_records_it(imagenet_checkpoint: Path, imagenet_root: Path,
                                             tmp_path: Path) -> None:
    import json

    out = tmp_path / "diag"
    result = _diagnose(imagenet_checkpoint, "--data-root", imagenet_root, "--sample", 3,
                       "--sample-seed", 2, "--eps", "8/255", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "diagnostics.json").read_text())["provenance"]["data"]
    assert data["dataset"] == "imagenet" and data["n"] == 3
    assert data["sample"] == 3 and data["sample_seed"] == 2
    assert data["indices"] == sample_indices(6, 3, 2).tolist()
    assert data["transform"] == "Resize(36, bilinear) + CenterCrop(32) + ToTensor()"


@pytest.mark.parametrize("damage, extra, message", [
    ("no-val", (), "not an ImageNet folder"),
    ("not-a-wnid", (), "not a WordNet id"),
    ("999-classes", (), "999 class folders"),
    ("bad-image", (), "cannot decode the image"),
    (None, ("--sample", "7"), "--sample 7 is more than the 6 examples"),
    (None, ("--sample", "2", "--limit", "2"), "pass --limit N or --sample N, not both"),
], ids=["no-val", "not-a-wnid", "999-classes", "bad-image", "sample-too-large",
        "limit-and-sample"])
def test_cli_bad_imagenet_input_is_one_line_and_writes_nothing(
        imagenet_checkpoint: Path, imagenet_root: Path, tmp_path: Path, damage: str | None,
        extra: tuple[str, ...], message: str) -> None:
    root = imagenet_root if damage is None else _damaged(tmp_path / "data", damage)
    out = tmp_path / "diag"
    result = _diagnose(imagenet_checkpoint, "--dataset", "imagenet", "--data-root", root,
                       *extra, "--out", out)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not out.exists() or not any(out.iterdir())
