"""Model registry.

Every model takes pixels in [0, 1] (N x C x H x W) and normalises inside ``forward`` with
mean/std buffers, so every gradient and every epsilon is in pixel space. Every model is a
:class:`Classifier` that exposes ``features(x)`` (penultimate activations, N x D) and
``head(features)`` (logits, N x classes), so diagnostics read penultimate activations
without hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from epsl.errors import EpslError
from epsl.registry import Registry

ModelFactory = Callable[..., "Classifier"]
MODELS: Registry[ModelFactory] = Registry("architecture")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the first layer of a model.

    Put in front of a network trained on normalised inputs, it makes the model take pixels in
    [0, 1] (N x C x H x W), so that every gradient, every attack and every ε is in pixel space.
    ``mean`` and ``std`` are on the [0, 1] scale, one value per channel (or one for all), and
    are kept as buffers, so they travel with the checkpoint.

    >>> imagenet = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    >>> model = torch.nn.Sequential(imagenet, net)          # net: trained on normalised inputs
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(list(mean)) != len(list(std)) or any(float(s) <= 0 for s in std):
            raise EpslError(f"Normalize needs one positive std per mean (got mean {list(mean)}, "
                            f"std {list(std)})")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Base class: ``forward(x) = head(features(x))`` with normalisation first."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)

    def body(self, x: torch.Tensor) -> torch.Tensor:  # normalised input -> penultimate
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N x D) for pixels x in [0, 1]."""
        return self.body(self.normalize(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (N x classes) from penultimate activations."""
        return self.fc(features)  # type: ignore[no-any-return,operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def create_model(name: str, **kwargs: Any) -> Classifier:
    """Build a registered architecture: ``create_model("madry-mnist", in_channels=1, ...)``.

    Every factory takes ``in_channels``, ``num_classes``, ``input_size``, ``mean`` and ``std``
    plus its own keyword arguments (``depth``, ``widen_factor`` ...).
    """
    return MODELS[name](**kwargs)


# --------------------------------------------------------------------------- architectures


class SmallCNN(Classifier):
    """A fast CNN for 8x8 digits and other small inputs: two 3x3 convs, a pool, fc 128."""

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], width: int = 32,
                 hidden: int = 128) -> None:
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        side = input_size // 2
        self.fc1 = nn.Linear(2 * width * side * side, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))


class MLP(Classifier):
    """A small ReLU network (flatten, ``depth`` hidden layers of ``hidden`` units, fc): small
    enough for the exact minimal perturbation as a mixed-integer program (``epsl certify
    --exact``)."""

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], hidden: int = 32,
                 depth: int = 2) -> None:
        super().__init__(mean, std)
        if depth < 1 or hidden < 1:
            raise EpslError(f"mlp needs depth >= 1 and hidden >= 1 (got {depth}, {hidden})")
        sizes = [in_channels * input_size * input_size] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:],
                                                                    strict=False))
        self.fc = nn.Linear(hidden, num_classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return x


class MadryCNN(Classifier):
    """The MNIST CNN of Madry et al. (2017): conv 32 5x5, pool, conv 64 5x5, pool, fc 1024."""

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        side = input_size // 4
        self.fc1 = nn.Linear(64 * side * side, 1024)
        self.fc = nn.Linear(1024, num_classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))


class _PreActBlock(nn.Module):
    """BN-ReLU-conv twice with a skip (a 1x1 conv where the shape changes), and dropout
    between the convolutions: the block of Wide ResNet and of PreAct ResNet (no dropout)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + skip


class _PreActNet(Classifier):
    """A 3x3 stem, then stages of :class:`_PreActBlock` (``stages``: output width and stride of
    each, ``blocks`` blocks per stage; the first of a stage strides), then BN-ReLU and global
    average pooling: the layout Wide ResNet and PreAct ResNet share."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, in_channels: int,
                 num_classes: int, stem: int, stages: Sequence[tuple[int, int]], blocks: int,
                 dropout: float = 0.0) -> None:
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        in_planes = stem
        for planes, stride in stages:
            for i in range(blocks):
                layers.append(_PreActBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class WideResNet(_PreActNet):
    """Wide ResNet (Zagoruyko & Komodakis 2016); ``depth=28, widen_factor=10`` is the paper's."""

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], depth: int = 28,
                 widen_factor: int = 10, dropout: float = 0.0) -> None:
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        stages = [(16 * widen_factor, 1), (32 * widen_factor, 2), (64 * widen_factor, 2)]
        super().__init__(mean, std, in_channels=in_channels, num_classes=num_classes, stem=16,
                         stages=stages, blocks=(depth - 4) // 6, dropout=dropout)


class PreActResNet18(_PreActNet):
    """Pre-activation ResNet-18 (He et al. 2016), the usual CIFAR robustness baseline."""

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], width: int = 64) -> None:
        stages = [(width * mult, stride) for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2))]
        super().__init__(mean, std, in_channels=in_channels, num_classes=num_classes,
                         stem=width, stages=stages, blocks=2)


MODELS.register("small-cnn")(SmallCNN)
MODELS.register("mlp")(MLP)
MODELS.register("madry-mnist")(MadryCNN)
MODELS.register("wrn")(WideResNet)
MODELS.register("preact-resnet18")(PreActResNet18)


@MODELS.register("wrn-28-10")
def wrn_28_10(**kwargs: Any) -> WideResNet:
    """The paper's CIFAR model: Wide ResNet, depth 28, widen factor 10."""
    kwargs.setdefault("depth", 28)
    kwargs.setdefault("widen_factor", 10)
    return WideResNet(**kwargs)


# --------------------------------------------------------------------------- foreign models


class Wrapped(Classifier):
    """A model epsl did not build (RobustBench, timm, torchvision, your own) as a
    :class:`Classifier`: ``Normalize(mean, std)`` in front, so that it takes pixels in [0, 1].

    ``mean``/``std`` default to 0/1 for a model that already normalises inside (RobustBench's
    models do). When ``split_head`` (below) finds that the model's last ``nn.Linear`` produces
    its logits, that layer becomes ``head`` and the rest ``features``; otherwise ``features``
    is unavailable and the model is used whole.
    """

    def __init__(self, net: nn.Module, *, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__(mean, std)
        self.net = net
        self.fc: nn.Module | None = None
        #: the dotted name of the layer that became ``head``, or None
        self.head_name: str | None = None

    def body(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is None:
            raise EpslError("this model's penultimate activations are unknown: its logits do "
                            "not come from one final linear layer")
        return self.net(x)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(x))
        return out if self.fc is None else self.fc(out)  # type: ignore[no-any-return]


def _last_linear(net: nn.Module) -> str | None:
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


@torch.no_grad()
def split_head(model: Wrapped, example: torch.Tensor) -> str | None:
    """Make ``model``'s last ``nn.Linear`` its ``head`` if the logits are exactly that layer
    applied to its input (checked on ``example``, N x C x H x W in [0, 1]); the layer's name,
    or None when they are not (then the model stays whole and gives no ``features``)."""
    name = _last_linear(model.net)
    if name is None:
        return None
    layer = model.net.get_submodule(name)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        logits = model(example)
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0].ndim != 2 or logits.ndim != 2:
        return None
    if not torch.equal(layer(seen[0]), logits):
        return None
    model.net.set_submodule(name, nn.Identity())
    model.fc, model.head_name = layer, name
    if not torch.equal(model(example), logits):  # the layer was used twice, or not last
        model.net.set_submodule(name, layer)
        model.fc, model.head_name = None, None
        return None
    return name


__all__ = ["Classifier", "MLP", "MODELS", "MadryCNN", "ModelFactory", "Normalize",
           "PreActResNet18", "SmallCNN", "WideResNet", "Wrapped", "create_model", "split_head",
           "wrn_28_10"]
