"""The training loop: repeatability, resume, divergence, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from epsl.defenses import RECIPES, DefenseConfig
from epsl.defenses.train import TrainConfig, state_path, train
from epsl.errors import EpslError
from epsl.models import checkpoint


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = checkpoint.load(path)
    return model.state_dict()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("defense", [
    DefenseConfig(label_smoothing=0.5, noise_sigma=0.2),
    DefenseConfig(logit_squeeze=1.0, adv="pgd", adv_eps=0.1, adv_steps=2),
], ids=["ls+noise", "lsq+pgd"])
def test_resume_equals_uninterrupted_run(tmp_path: Path, defense: DefenseConfig) -> None:
    config = TrainConfig(epochs=3, batch_size=128, defense=defense, device="cpu", seed=7)
    full = train(config, tmp_path / "full.safetensors")

    def stop_after_first(report) -> None:
        if report.epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(config, tmp_path / "cut.safetensors", on_epoch=stop_after_first)
    assert checkpoint.read_metadata(tmp_path / "cut.safetensors")["epochs_done"] == 1
    resumed = train(config, tmp_path / "cut.safetensors", resume=True)
    assert [r.epoch for r in resumed.history] == [2, 3]
    a, b = _weights(full.path), _weights(resumed.path)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metadata["metrics"]["test_accuracy"] == full.metadata["metrics"]["test_accuracy"]


def test_a_run_killed_between_state_and_checkpoint_resumes(tmp_path: Path) -> None:
    """The optimiser state of epoch 2 landed, the checkpoint of epoch 2 did not (killed between
    the two writes): the state of epoch 1, kept beside it, resumes the run to the weights of
    an uninterrupted one. A finished run keeps no previous state."""
    import shutil

    from epsl.defenses.train import previous_state_path, state_path

    config = TrainConfig(epochs=3, batch_size=128, device="cpu", seed=7,
                         defense=DefenseConfig(label_smoothing=0.5, noise_sigma=0.2))
    full = train(config, tmp_path / "full.safetensors")
    assert not previous_state_path(full.path).exists()
    cut = tmp_path / "cut.safetensors"

    def stop_after_second(report) -> None:
        if report.epoch == 1:
            shutil.copyfile(cut, tmp_path / "epoch1.safetensors")
        if report.epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(config, cut, on_epoch=stop_after_second)
    assert previous_state_path(cut).exists() and state_path(cut).exists()
    shutil.copyfile(tmp_path / "epoch1.safetensors", cut)  # the epoch-2 checkpoint never landed
    resumed = train(config, cut, resume=True)
    assert [r.epoch for r in resumed.history] == [2, 3]
    a, b = _weights(full.path), _weights(resumed.path)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not previous_state_path(cut).exists()


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=128, device="cpu", seed=1)
    a = _weights(train(cfg, tmp_path / "a.safetensors").path)
    b = _weights(train(cfg, tmp_path / "b.safetensors").path)
    c = _weights(train(TrainConfig(epochs=1, batch_size=128, device="cpu", seed=2),
                       tmp_path / "c.safetensors").path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_steps_bound_the_run(tmp_path: Path) -> None:
    result = train(TrainConfig(steps=5, batch_size=64, device="cpu"), tmp_path / "k.safetensors")
    assert result.metadata["steps_done"] == 5
    assert result.metadata["complete"] is True
    assert result.metadata["train_config"]["steps"] == 5


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "d.safetensors"
    cfg = TrainConfig(epochs=1, batch_size=128, device="cpu", seed=0)
    train(cfg, out)
    good = _weights(out)
    bad = TrainConfig(epochs=2, batch_size=128, device="cpu", optimizer="sgd", lr=1e25,
                      defense=DefenseConfig(logit_squeeze=10.0))
    with pytest.raises(EpslError, match="diverged"):
        train(bad, out, overwrite=True)
    # the failed run never completed an epoch, so the earlier checkpoint is untouched
    assert all(torch.equal(good[k], v) for k, v in _weights(out).items())


def test_existing_output_is_not_overwritten_without_permission(tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    train(TrainConfig(steps=2, device="cpu"), out)
    with pytest.raises(EpslError, match="exists; pass resume=True to continue it or "
                       "overwrite=True to replace"):
        train(TrainConfig(steps=2, device="cpu"), out)
    with pytest.raises(EpslError, match="^resume=True: .* different config"):
        train(TrainConfig(steps=3, device="cpu"), out, resume=True)


def test_library_messages_name_parameters_not_flags(tmp_path: Path) -> None:
    """Only the CLI speaks in flags: the library's errors name its own parameters."""
    for bad in (dict(steps=0), dict(batch_size=0), dict(lr=-1.0), dict(optimizer="rmsprop"),
                dict(train_limit=0), dict(epochs=0)):
        with pytest.raises(EpslError) as refused:
            TrainConfig(**bad)  # type: ignore[arg-type]
        assert "--" not in str(refused.value)
    for bad in (dict(label_smoothing=2.0), dict(logit_squeeze=-1.0), dict(adv="cw"),
                dict(adv="pgd", adv_steps=0)):
        with pytest.raises(EpslError) as refused:
            DefenseConfig(**bad)  # type: ignore[arg-type]
        assert "--" not in str(refused.value)
    with pytest.raises(EpslError, match="^out=.*m.pt: checkpoints are written as .safetensors"):
        train(TrainConfig(steps=1, device="cpu"), tmp_path / "m.pt")


def test_progress_is_called_with_the_examples_of_every_step(tmp_path: Path) -> None:
    seen: list[int] = []
    train(TrainConfig(steps=4, batch_size=50, train_limit=120, device="cpu"),
          tmp_path / "p.safetensors", progress=seen.append)
    assert seen == [50, 50, 20, 50]  # an epoch of 120 examples, then a step of the next


def test_metadata_records_the_run(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(steps=3, device="cpu", defense=DefenseConfig(label_smoothing=0.2))
    meta = train(cfg, out).metadata
    assert meta["arch"] == "small-cnn" and meta["dataset"] == "digits"
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["train_config"]["defense"]["label_smoothing"] == 0.2
    assert TrainConfig.from_dict(meta["train_config"]) == cfg
    assert {"train_accuracy", "test_accuracy"} <= set(meta["metrics"])
    assert state_path(out).exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_reach_95_percent(tmp_path: Path, name: str) -> None:
    cfg = TrainConfig(epochs=15, device="cpu", seed=0, defense=RECIPES[name])
    meta = train(cfg, tmp_path / f"{name}.safetensors").metadata
    assert meta["metrics"]["test_accuracy"] >= 0.95


def test_weights_that_explode_in_the_last_step_are_never_saved(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The loss of the last step is finite, the step itself makes the weights NaN: no
    checkpoint may be written (and no 'complete' model with NaN metrics)."""
    step = torch.optim.Adam.step

    def exploding_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", exploding_step)
    out = tmp_path / "nan.safetensors"
    with pytest.raises(EpslError, match="weights are no longer finite"):
        train(TrainConfig(steps=1, device="cpu"), out)
    assert not out.exists()


def _quick(tmp_path: Path, name: str, **kw: object) -> tuple[dict, nn.Module]:
    config = TrainConfig(epochs=2, seed=0, device="cpu", train_limit=600,
                         defense=DefenseConfig(label_smoothing=0.5, noise_sigma=0.3), **kw)
    result = train(config, tmp_path / f"{name}.safetensors")
    model, _ = checkpoint.load(tmp_path / f"{name}.safetensors")
    return result.metadata, model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_as_well_as_fp32(tmp_path: Path, precision: str) -> None:
    """Autocast training (fp16 with a gradient scaler) reaches the clean accuracy of fp32
    training within 3 points on the same seed; the precision is recorded in the metadata."""
    reference, _ = _quick(tmp_path, "fp32")
    reduced, _ = _quick(tmp_path, precision, precision=precision)
    assert reduced["train_config"]["precision"] == precision
    assert abs(reduced["metrics"]["test_accuracy"]
               - reference["metrics"]["test_accuracy"]) <= 0.03


def test_channels_last_changes_no_number_but_rounding(tmp_path: Path) -> None:
    """NHWC memory format is a layout, not a model: after 20 Adam steps the weights match the
    default layout's to within float32 rounding carried through the optimiser (measured: at
    most 2.6e-5 on weights of size ~0.05), and the clean accuracy is the same."""
    plain_meta, plain = _quick(tmp_path, "plain", channels_last=False)
    nhwc_meta, nhwc = _quick(tmp_path, "nhwc", channels_last=True)
    for (name, a), (_, b) in zip(plain.state_dict().items(), nhwc.state_dict().items(),
                                 strict=True):
        assert float((a - b).abs().max()) <= 1e-4, name
    assert nhwc_meta["metrics"]["test_accuracy"] == pytest.approx(
        plain_meta["metrics"]["test_accuracy"], abs=0.01)


def test_bad_precision_is_a_one_line_error() -> None:
    with pytest.raises(EpslError, match="^precision must be one of fp32, bf16, fp16"):
        TrainConfig(precision="fp8")
