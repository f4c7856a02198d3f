"""torchrun: N processes give the answer of one (docs/distributed.md).

The in-process tests check the pieces against single-process references: the sharded objective's
averaged gradient against the whole-batch gradient, the row split, the chunk sharing. The tests
marked ``distributed`` launch ``torchrun --nproc-per-node 2`` on the CPU (gloo) and compare what
it writes with what one process writes: training with three defenses, the sharded tables, and a
training run whose worker is killed with SIGKILL and restarted by torchrun's elastic agent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from safetensors.torch import load_file

from epsl import distributed
from epsl.cli.main import main
from epsl.defenses import DefenseConfig, objective
from epsl.defenses.train import BatchShard
from epsl.distributed import batch_rows, shard_map
from epsl.models import create_model
from epsl.models.checkpoint import read_metadata

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


# --------------------------------------------------------------------------- in one process


@pytest.mark.parametrize(("n", "size"), [(64, 2), (29, 2), (7, 3), (5, 5), (130, 4)])
def test_batch_rows_split_the_batch_once(n: int, size: int) -> None:
    rows = [batch_rows(n, size, rank) for rank in range(size)]
    covered = [i for r in rows for i in range(n)[r]]
    assert covered == list(range(n))
    lengths = [len(range(n)[r]) for r in rows]
    assert max(lengths) - min(lengths) <= 1
    assert [len(t) for t in torch.arange(n).tensor_split(size)] == lengths  # torch's split


def test_shard_map_alone_is_the_plain_loop() -> None:
    seen: list[int] = []
    out = shard_map(lambda k: torch.full((k,), k), [3, 1, 2], progress=seen.append,
                    sizes=[3, 1, 2])
    assert [t.tolist() for t in out] == [[3, 3, 3], [1], [2, 2]]
    assert seen == [3, 1, 2]
    assert shard_map(lambda k: k, []) == []


@pytest.mark.parametrize("defense", [
    DefenseConfig(label_smoothing=0.75, noise_sigma=0.3),
    DefenseConfig(logit_squeeze=5.0, noise_sigma=0.3),
    DefenseConfig(logit_squeeze=2.0, adv="pgd", adv_eps=0.1, adv_steps=3),
    DefenseConfig(logit_squeeze=1.0, label_smoothing=0.5, adv="fgsm", adv_eps=0.1,
                  adv_kappa=0.0),
], ids=["ls+noise", "lsq+noise", "lsq+pgd", "lsq+ls+fgsm"])
@pytest.mark.parametrize("size", [2, 3])
def test_sharded_objective_averages_to_the_whole_batch_gradient(
        defense: DefenseConfig, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What DDP computes, the mean over ranks of each rank's gradient, equals the gradient of
    the single-process objective, for an uneven split (29 rows) and beta ||Z||_F over the whole
    batch; the mean of the ranks' losses is the single-process loss. The all-reduce of
    ||Z||_F^2 is played by hand: a first pass records each rank's share, the second gets the
    sums."""
    torch.manual_seed(0)
    model = create_model("small-cnn", in_channels=1, num_classes=10, input_size=8,
                         mean=[0.3], std=[0.4])
    x, y = torch.rand(29, 1, 8, 8), torch.randint(0, 10, (29,))

    def run(shard: BatchShard | None) -> tuple[list[torch.Tensor], float]:
        model.zero_grad()
        generator = torch.Generator().manual_seed(7)
        if shard is None:  # the plain loss terms of epsl.defenses
            out = objective(model, x, y, defense, 10, generator)
        else:  # weighted for DDP by the training loop
            out = objective(model, x, y, defense, 10, generator, rows=shard.rows,
                            loss_term=shard.loss_term)
        out.loss.backward()
        return [p.grad.clone() for p in model.parameters()], float(out.loss.detach())

    reference, reference_loss = run(None)
    shards = [BatchShard(batch_rows(29, size, rank), 29, size) for rank in range(size)]
    shares: list[list[torch.Tensor]] = []
    for shard in shards:
        calls: list[torch.Tensor] = []
        monkeypatch.setattr(distributed, "global_sum",
                            lambda v, calls=calls: calls.append(v.detach().clone()) or v)
        run(shard)
        shares.append(calls)
    sums = [sum(parts) for parts in zip(*shares, strict=True)]  # one per loss evaluation
    assert len(sums) == (1 if defense.logit_squeeze else 0) * (
        2 if defense.adv != "none" and defense.adv_kappa > 0 else 1)
    gradients, losses = [], []
    for shard in shards:
        answers = iter(sums)
        monkeypatch.setattr(distributed, "global_sum", lambda v, answers=answers: next(answers))
        gradient, loss = run(shard)
        gradients.append(gradient)
        losses.append(loss)
    for parts, ref in zip(zip(*gradients, strict=True), reference, strict=True):
        torch.testing.assert_close(sum(parts) / size, ref, rtol=1e-4, atol=1e-6)
    assert sum(losses) / size == pytest.approx(reference_loss, rel=1e-5)


# --------------------------------------------------------------------------- under torchrun


def torchrun(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m epsl ARGS`` (gloo on the CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "epsl", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def one_process(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output


TRAIN = ["train", "--train-limit", "320", "--batch-size", "64", "--device", "cpu"]


def max_weight_gap(a: Path, b: Path) -> float:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    return max(float((left[k].float() - right[k].float()).abs().max()) for k in left)


@needs_gloo
@pytest.mark.distributed
@pytest.mark.parametrize("options", [
    ["--label-smoothing", "0.75", "--noise-sigma", "0.3"],
    ["--adv", "pgd", "--adv-eps", "0.1", "--adv-steps", "3"],
], ids=["ls+noise", "pgd"])
def test_torchrun_training_equals_one_process(options: list[str], tmp_path: Path) -> None:
    """The same seed gives the same model on 1 or 2 processes: weights within 1e-4 after 10
    steps (measured: 1.9e-6 and 7.9e-7, the reduction order of the all-reduce), while another
    seed lands 0.6 away."""
    args = [*TRAIN, "--epochs", "2", *options]
    one_process(*args, "--out", str(tmp_path / "one.safetensors"))
    one_process(*args, "--seed", "1", "--out", str(tmp_path / "seed1.safetensors"))
    torchrun(*args, "--out", "two.safetensors", cwd=tmp_path)
    meta = read_metadata(tmp_path / "two.safetensors")
    assert meta["processes"] == 2 and meta["complete"]
    assert max_weight_gap(tmp_path / "one.safetensors", tmp_path / "two.safetensors") < 1e-4
    assert max_weight_gap(tmp_path / "one.safetensors", tmp_path / "seed1.safetensors") > 1e-2
    assert meta["metrics"]["test_accuracy"] == pytest.approx(
        read_metadata(tmp_path / "one.safetensors")["metrics"]["test_accuracy"], abs=0.003)


SQUEEZE = [*TRAIN, "--logit-squeeze", "2", "--noise-sigma", "0.3", "--epochs", "10"]


@pytest.fixture(scope="module")
def squeezed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logit squeezing with noise trained by 2 processes, uninterrupted (and by one process)."""
    folder = tmp_path_factory.mktemp("squeeze")
    torchrun(*SQUEEZE, "--out", "two.safetensors", cwd=folder)
    one_process(*SQUEEZE, "--out", str(folder / "one.safetensors"))
    return folder


@needs_gloo
@pytest.mark.distributed
def test_torchrun_logit_squeezing_equals_one_process(squeezed: Path) -> None:
    """beta ||Z||_F is a norm over the whole batch (measured: 3.5e-6 after 50 steps). A norm
    per process (each rank's ||Z_r||_F scaled by sqrt(2)) landed 1.9e-2 away."""
    assert max_weight_gap(squeezed / "one.safetensors", squeezed / "two.safetensors") < 1e-4


@needs_gloo
@pytest.mark.distributed
def test_a_killed_worker_restarts_and_finishes_the_same_model(squeezed: Path,
                                                              tmp_path: Path) -> None:
    """torchrun --max-restarts 1; rank 1 is killed with SIGKILL once an epoch checkpoint
    exists; the restarted group resumes from it and ends with the uninterrupted weights."""
    out = tmp_path / "killed.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "--max-restarts", "1", "-m", "epsl", *SQUEEZE,
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    agent = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed_after = None
    start = time.monotonic()
    try:
        while agent.poll() is None and time.monotonic() - start < 240:
            if killed_after is None and out.exists():
                try:
                    meta = read_metadata(out)
                except Exception:  # noqa: BLE001 (a file being renamed into place)
                    continue
                if meta.get("epochs_done", 0) >= 2 and not meta.get("complete"):
                    worker = _worker(agent.pid, rank=1)
                    if worker is not None:
                        os.kill(worker, signal.SIGKILL)
                        killed_after = meta["epochs_done"]
            time.sleep(0.01)
        _, stderr = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert killed_after is not None, "the run finished before a worker could be killed"
    assert agent.returncode == 0, stderr[-3000:]
    assert "exitcode: -9" in stderr  # torchrun saw the SIGKILL and restarted the group
    meta = read_metadata(out)
    assert meta["complete"] and meta["epochs_done"] == 10
    assert max_weight_gap(out, squeezed / "two.safetensors") == 0.0


def _worker(agent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (a child of the agent), from /proc."""
    try:
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
        for pid in children:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(pid)
    except OSError:
        return None
    return None


@needs_gloo
@pytest.mark.distributed
@pytest.mark.parametrize(("command", "table"), [
    (["diagnose", "--batch-size", "64"], "diagnostics.csv"),
    (["attack", "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--restarts", "2",
      "--batch-size", "32"], "attack.csv"),
    (["attack", "--attack", "square", "--eps", "0.1", "--steps", "50", "--batch-size", "32"],
     "attack.csv"),
    (["eps-star", "--fmn-steps", "10", "--fab-steps", "5", "--limit", "96"], "eps_star.csv"),
    (["certify", "--fmn-steps", "10", "--fab-steps", "5", "--limit", "6", "--steps", "3",
      "--batch-size", "2"], "certify.csv"),
], ids=["diagnose", "pgd", "square", "eps-star", "certify"])
def test_sharded_tables_equal_one_process(command: list[str], table: str,
                                          digits_checkpoint: Path, tmp_path: Path) -> None:
    """Rank 0 writes the table one process writes (every row, in order, no padding), and the
    record differs only in the command line."""
    args = [command[0], str(digits_checkpoint), *command[1:]]
    one_process(*args, "--device", "cpu", "--out", str(tmp_path / "one"))
    torchrun(*args, "--device", "cpu", "--out", "two", cwd=tmp_path)
    one = pd.read_csv(tmp_path / "one" / table)
    two = pd.read_csv(tmp_path / "two" / table)
    pd.testing.assert_frame_equal(one, two)
    assert two["index"].is_unique
    assert not list((tmp_path / "two").glob(".*"))  # no temporary files of other ranks


def test_without_torchrun_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched()
    world = distributed.setup()
    assert (world.rank, world.size, world.writer, world.distributed) == (0, 1, True, False)
    assert distributed.all_sum([1.0, 2.0]) == [1.0, 2.0]


def test_what_n_processes_cannot_train_is_refused_in_one_line(tmp_path: Path) -> None:
    from epsl.defenses.train import TrainConfig, check_world
    from epsl.errors import EpslError

    cpu = torch.device("cpu")
    two = distributed.World(rank=0, size=2)
    check_world(two, 130, TrainConfig(batch_size=64), cpu)  # last batch of 2: fine
    with pytest.raises(EpslError, match="last batch 1"):
        check_world(two, 129, TrainConfig(batch_size=64), cpu)
    with pytest.raises(EpslError, match="at least 4 examples in every batch"):
        check_world(distributed.World(rank=1, size=4), 100, TrainConfig(batch_size=2), cpu)
    check_world(distributed.World(), 129, TrainConfig(batch_size=64), cpu)  # one process
    with pytest.raises(EpslError, match=r"^sync_bn=True needs CUDA"):  # the library's words
        check_world(distributed.World(), 129, TrainConfig(sync_bn=True), cpu)
    result = CliRunner().invoke(main, [*TRAIN, "--epochs", "1", "--sync-bn",
                                       "--out", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: --sync-bn needs CUDA")
    assert not list(tmp_path.iterdir())


def test_the_python_example_of_the_docs_runs_in_one_process(
        digits_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import shutil

    text = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    (tmp_path / "runs").mkdir()
    shutil.copyfile(digits_checkpoint, tmp_path / "runs" / "ls.safetensors")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/distributed.md", "exec"), {})  # noqa: S102
    frame = pd.read_csv(tmp_path / "runs" / "ls-eps" / "eps_l.csv")
    assert len(frame) == 359 and (tmp_path / "runs" / "ls-eps" / "diagnostics.safetensors").is_file()


@needs_gloo
@pytest.mark.distributed
def test_shard_map_and_agree_on_two_processes(tmp_path: Path) -> None:
    """Uneven and empty chunks, tuple and tensor outputs, bool over gloo, rank 0's decision on
    both ranks, and an error in rank 1's chunk raised on both ranks, which stay in step."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(Path(__file__).with_name("shard_worker.py")),
               str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = (tmp_path / "rank0.txt").read_text().splitlines()
    rank1 = (tmp_path / "rank1.txt").read_text().splitlines()
    for lines in (rank0, rank1):
        assert lines[0] == "shard_map equal True"
        assert lines[1] == "tensor outputs [[7], [8], [9]]"
        assert lines[2] == "agree [1, 2, 3]"
        assert lines[4] == "after [2.0]"
    assert rank1[3] == "error RuntimeError: chunk 1 failed"  # chunk 1 is rank 1's
    assert rank0[3].startswith("error EpslError: process 1 failed")


@needs_gloo
@pytest.mark.distributed
def test_sharded_compare_with_audit_and_eps_star_equals_one_process(
        digits_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compare runs ε_L, attacks, ε* and the audit per model: the comparison table and every
    per-model table rank 0 writes are byte for byte those of one process."""
    import shutil

    for name in ("a", "b"):
        shutil.copyfile(digits_checkpoint, tmp_path / f"{name}.safetensors")
    args = ["compare", "a.safetensors", "b.safetensors", "--eps", "0.1", "--limit", "48",
            "--pgd-steps", "3", "--audit", "--fmn-steps", "10", "--fab-steps", "5",
            "--no-figures", "--device", "cpu"]
    torchrun(*args, "--out", "two", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    one_process(*args, "--out", "one")
    tables = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.csv"))
    assert {"comparison.csv", "a/audit/audit.csv", "b/eps_star/eps_star.csv"} <= {
        str(t) for t in tables}
    for table in tables:
        assert (tmp_path / "one" / table).read_bytes() == (tmp_path / "two" / table).read_bytes(), table


def test_a_restart_resumes_only_its_own_launch(digits_checkpoint: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An elastic restart resumes a checkpoint that its own launch wrote, never one of another
    launch (even a launch with the same --rdzv-id), and nothing on a first attempt."""
    import shutil

    from epsl.defenses.resume import restarted as _restarted
    from epsl.models import checkpoint

    model, meta = checkpoint.load(digits_checkpoint)
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    checkpoint.save(ours, model, {**meta, "launch": "abc"})
    shutil.copyfile(digits_checkpoint, theirs)
    monkeypatch.setattr(distributed, "_LAUNCH", "abc")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _restarted(ours) and not _restarted(theirs)
    assert not _restarted(tmp_path / "missing.safetensors")
    monkeypatch.setattr(distributed, "_LAUNCH", "another launch")
    assert not _restarted(ours)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setattr(distributed, "_LAUNCH", "abc")
    assert not _restarted(ours)
