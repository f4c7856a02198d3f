"""Models: the architectures epsl trains (:mod:`epsl.models.architectures`, the ``MODELS``
registry, normalisation inside every model), safe checkpoints (:mod:`epsl.models.checkpoint`),
models epsl did not train (:mod:`epsl.models.sources`: RobustBench, timm, torchvision) and the
safe reading of foreign weights (:mod:`epsl.models.safeload`)."""

from epsl.models.architectures import (
    MLP,
    MODELS,
    Classifier,
    MadryCNN,
    Normalize,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    Wrapped,
    create_model,
    split_head,
    wrn_28_10,
)

__all__ = ["MLP", "MODELS", "Classifier", "MadryCNN", "Normalize", "PreActResNet18", "SmallCNN",
           "WideResNet", "Wrapped", "create_model", "split_head", "wrn_28_10"]
