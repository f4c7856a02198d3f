"""epsl: robustness analysis for PyTorch classifiers around the eps_L diagnostic (Eq. 4 of
Shafahi et al., "Label Smoothing and Logit Squeezing: A Replacement for Adversarial Training?")."""

from __future__ import annotations

from typing import Any

from epsl.version import __version__

__all__ = ["Normalize", "__version__", "eps_cert", "eps_l", "estimate", "load"]


def eps_l(model: Any, x: Any, y: Any, *, mean: Any = None, std: Any = None, **options: Any) -> Any:
    """Equation 4's eps_L per example: ``(N,)`` float, negative where ``model`` misclassifies.

    ``model`` takes pixels ``x`` (N x C x H x W) in [0, 1]; a model that expects normalised
    inputs gets ``mean``/``std`` (per channel, on the [0, 1] scale), applied in front of it by
    :class:`epsl.Normalize` so that every gradient stays in pixel space. ``options`` go to
    :func:`epsl.diagnostics.diagnose` (``device``, ``batch_size``, ``memory``, ``top_k`` ...), which
    returns every per-example quantity, not only eps_L.

    >>> model, meta = epsl.load("timm:resnet18.a1_in1k")   # normalises inside already
    >>> epsl.eps_l(model, x, y)
    """
    from torch import nn

    from epsl.diagnostics import diagnose
    from epsl.errors import EpslError
    from epsl.models import Normalize

    if (mean is None) != (std is None):
        raise EpslError("pass mean and std together (or neither)")
    if mean is not None:
        device = next(model.parameters()).device
        model = nn.Sequential(Normalize(mean, std), model).to(device).train(model.training)
    return diagnose(model, x, y, **options).eps_l


def eps_cert(model: Any, x: Any, y: Any, *, eps_star: Any = None, **options: Any) -> Any:
    """ε_cert per example (``.eps_cert``, beside the intervals' radius and, with ``exact``, the
    MILP's): the largest ℓ∞ radius (in the [0, 1] box) at which CROWN bounds
    prove the prediction cannot change, by bisection on [0, ``eps_star``] (ε* from
    :func:`epsl.attacks.eps_star.find_eps_star`, or the whole box). ``options`` are
    :class:`epsl.certify.radius.CertifyOptions` fields (``steps``, ``method``, ``exact`` ...).
    Returns a :class:`epsl.certify.radius.CertifyOutput` (``eps_cert``, ``eps_exact`` ...).

    >>> out = epsl.eps_cert(model, x, y, eps_star=found.eps_star, steps=8)
    """
    import numpy as np

    from epsl.certify.radius import CertifyOptions
    from epsl.certify.radius import certify as run

    hi = None if eps_star is None else np.asarray(
        eps_star.detach().cpu() if hasattr(eps_star, "detach") else eps_star, dtype=np.float64)
    unbroken = None if hi is None else ~np.isfinite(hi)
    return run(model, x, y, hi=hi, hi_unbroken=unbroken, options=CertifyOptions(**options))


def estimate(checkpoint: str, *, eps: float | tuple[float, ...], labelled: int,
             folder: str | None = None, **options: Any) -> Any:
    """The robust accuracy of ``checkpoint``'s images at ``eps`` at ε_L's cost: the full audit
    on a seeded random sample of ``labelled`` images, ε_L and PGD-20 (CW) on all, combined by
    prediction-powered inference into a 95% interval (a normal interval, valid whatever the
    predictor's bias as ``labelled`` grows); with the conformal floor
    ε* ≥ q·ε_L. ``options`` are :class:`epsl.runs.estimate.EstimateConfig` fields
    (``predictor``, ``labelled_seed``, ``alpha``, ``norm``, ``audit`` ...) or
    :class:`epsl.runs.context.DataConfig` fields (``dataset``, ``limit``, ``sample`` ...);
    ``folder`` keeps the audits and diagnostics for reuse. Returns the ``estimate``
    :class:`~epsl.results.records.Result`: ``.summary["results"]`` per eps, ``.table`` per
    image.

    >>> found = epsl.estimate("model.safetensors", eps=0.1, labelled=60, limit=600)
    >>> found.summary["results"]["0.1"]["robust_accuracy"]
    """
    import dataclasses

    from epsl.runs.context import DataConfig
    from epsl.runs.estimate import EstimateConfig, run_estimate

    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    data = DataConfig(checkpoint=checkpoint,
                      **{k: v for k, v in options.items() if k in data_fields})
    config = EstimateConfig(data=data, eps=(eps,) if isinstance(eps, int | float) else eps,
                            labelled=labelled,
                            **{k: v for k, v in options.items() if k not in data_fields})
    return run_estimate(config, folder=folder)


def __getattr__(name: str) -> Any:
    # ``epsl.load`` is imported lazily so that torch-free subpackages (``epsl.analysis``,
    # which renders saved tables only) can be imported without pulling in torch.
    if name == "load":
        from epsl.models.checkpoint import load

        return load
    if name == "Normalize":
        from epsl.models import Normalize

        return Normalize
    raise AttributeError(f"module 'epsl' has no attribute {name!r}")
