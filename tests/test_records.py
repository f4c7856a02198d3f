"""The records layer: every result type round-trips through save/load with its provenance,
reuse is decided by the full provenance, and readers refuse schemas they do not know."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from epsl.analysis import load_run
from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.results.records import KINDS, Provenance, Result, load, reusable
from tests.files import snapshot

ORIGIN = Provenance(
    checkpoint="runs/m.safetensors", checkpoint_sha256="a" * 64,
    data={"dataset": "digits", "split": "test", "source": "sklearn", "n": 3, "sha256": "d" * 64},
    settings={"eps": 0.1, "steps": (1, 5), "seed": 0},
    model={"arch": "small-cnn", "train_config": {"defense": {"label_smoothing": 0.5}}},
    source={"checkpoint": "runs/natural.safetensors", "checkpoint_sha256": "b" * 64},
    device="cpu", epsl_version="0.1.0", torch_version="2.x", command="epsl attack ...")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_result_type_round_trips(tmp_path: Path, name: str) -> None:
    spec = KINDS[name]
    table = pd.DataFrame({"index": [0, 1, 2], "value": [0.5, float("inf"), -1.0]})
    result = Result(name, {"n": 3, "eps": 0.1, "verdict": "ok"}, ORIGIN,
                    table if spec.table else None)
    written = result.save(tmp_path)
    assert written[-1] == tmp_path / spec.record  # the record is written last
    back = load(tmp_path, name)
    assert back.kind == name and back.summary == {"n": 3, "eps": 0.1, "verdict": "ok"}
    assert back.provenance is not None and back.provenance.to_dict() == ORIGIN.to_dict()
    assert back.provenance.same_origin(ORIGIN) and back.model == ORIGIN.model
    if spec.table:
        pd.testing.assert_frame_equal(back.table, table)
    record = json.loads((tmp_path / spec.record).read_text())
    assert record["schema"] == f"epsl.{name}" and record["schema_version"] == spec.version
    if spec.extra:  # a record without the kind's other files is no complete result
        assert reusable(tmp_path, name, ORIGIN) is None
        for extra in spec.extra:  # nor with files its record does not pin
            (tmp_path / extra).write_bytes(b"")
        assert reusable(tmp_path, name, ORIGIN) is None
    else:
        assert reusable(tmp_path, name, ORIGIN) is not None


@pytest.mark.parametrize("change", [
    {"checkpoint_sha256": "c" * 64},
    {"data": {**ORIGIN.data, "n": 4}},
    {"data": {**ORIGIN.data, "sha256": "e" * 64}},
    {"data": {**ORIGIN.data, "split": "train"}},
    {"settings": {**ORIGIN.settings, "eps": 0.2}},
    {"settings": {**ORIGIN.settings, "seed": 1}},
    {"source": None},
    {"source": {"checkpoint": "runs/natural.safetensors", "checkpoint_sha256": "f" * 64}},
    {"epsl_version": "9"},
    {"behaviour": [[1.0, 0.5, 0.25, -0.25]]},
], ids=["weights", "count", "examples", "split", "eps", "seed", "no-source", "other-source",
        "release", "behaviour"])
def test_any_change_of_origin_prevents_reuse(tmp_path: Path, change: dict) -> None:
    Result("audit", {"n": 3}, ORIGIN, pd.DataFrame({"index": [0]})).save(tmp_path)
    asked = replace(ORIGIN, **change)
    assert not asked.same_origin(ORIGIN)
    assert reusable(tmp_path, "audit", asked) is None


def test_what_does_not_decide_reuse(tmp_path: Path) -> None:
    """A moved checkpoint with the same content, another device, torch version or command
    line."""
    Result("audit", {"n": 3}, ORIGIN, pd.DataFrame({"index": [0]})).save(tmp_path)
    moved = replace(ORIGIN, checkpoint="elsewhere/m.safetensors", device="cuda:0",
                    torch_version="9", command=None,
                    data={**ORIGIN.data, "source": "/other/path"},
                    settings={**ORIGIN.settings, "steps": [1, 5]})  # a list equals a tuple
    assert reusable(tmp_path, "audit", moved) is not None


@pytest.mark.parametrize("edit, message", [
    (lambda r: {**r, "schema_version": 99}, "unknown schema 'epsl.audit' version 99"),
    (lambda r: {**r, "schema": "epsl.attack"}, "unknown schema 'epsl.attack'"),
    (lambda r: {k: v for k, v in r.items() if k not in ("schema", "schema_version")},
     "not an epsl audit record (no schema"),
], ids=["version", "kind", "no-schema"])
def test_unknown_schema_is_one_clear_error(tmp_path: Path, edit, message: str) -> None:
    run = tmp_path / "run"
    Result("audit", {"n": 1, "eps": 0.1}, ORIGIN, pd.DataFrame({"index": [0], "robust": [True]})
           ).save(run / "audit")
    path = run / "audit" / "audit.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(EpslError, match=re.escape(message)) as info:
        load_run(run)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert reusable(run / "audit", "audit", ORIGIN) is None  # never served as fresh
    out = tmp_path / "figs"
    result = CliRunner().invoke(main, ["figures", str(run), "--out", str(out)])
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_a_table_without_its_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / "diagnostics.csv").write_text("index,eps_l\n0,0.1\n")
    with pytest.raises(EpslError, match="no epsl record \\(diagnostics.json\\) beside it"):
        load_run(tmp_path)


def test_a_refused_save_writes_nothing(tmp_path: Path) -> None:
    Result("landscape", {"a": 1}, ORIGIN, pd.DataFrame({"x": [1]})).save(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(EpslError, match="overwrite=True"):
        Result("landscape", {"a": 2}, ORIGIN, pd.DataFrame({"x": [2]})).save(
            tmp_path, overwrite=False)
    assert snapshot(tmp_path) == before
    with pytest.raises(EpslError, match="does not serialise|not JSON serialisable"):
        Result("landscape", {"a": object()}, ORIGIN, pd.DataFrame({"x": [3]})).save(tmp_path)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ through the commands

def invoke(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def smoothed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A (barely trained) label smoothing + noise checkpoint: its label is its defense."""
    path = tmp_path_factory.mktemp("ckpt") / "ls.safetensors"
    invoke("train", "--steps", 3, "--label-smoothing", 0.5, "--noise-sigma", 0.3,
           "--out", path)
    return path


def test_attack_and_audit_folders_are_labelled_by_their_defense(smoothed: Path,
                                                               tmp_path: Path) -> None:
    invoke("attack", smoothed, "--attack", "fgsm", "--eps", "0.1", "--limit", 8,
           "--out", tmp_path / "fgsm")
    invoke("audit", smoothed, "--eps", "0.1", "--limit", 8, "--quick", "--skip-expensive",
           "--out", tmp_path / "audit")
    for folder in ("fgsm", "audit"):
        run = load_run(tmp_path / folder)
        assert run.label == "LS α=0.5 + σ=0.3" and run.meta["arch"] == "small-cnn"
        assert run.meta["train_config"]["defense"]["label_smoothing"] == 0.5
    output = invoke("figures", tmp_path / "fgsm", tmp_path / "audit", "--out", tmp_path / "f")
    # the two runs of one model are told apart by their folders, after the defense
    assert [line.split(" /")[0] for line in output.splitlines()[:2]] == [
        "LS α=0.5 + σ=0.3 (k=3) (fgsm)", "LS α=0.5 + σ=0.3 (k=3) (audit)"]


def test_compare_recomputes_what_other_examples_or_settings_made(smoothed: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", smoothed, "--eps", "0.1", "--pgd-steps", 3, "--audit", "--no-figures",
            "--out", out]
    invoke(*args, "--limit", 12)
    audit_json = out / "ls" / "audit" / "audit.json"
    assert json.loads(audit_json.read_text())["examples"] == 12
    # without --overwrite nothing is replaced; with it, every result made from 12 examples
    # is recomputed on 24
    before = snapshot(out)
    refused = CliRunner().invoke(main, [str(a) for a in [*args, "--limit", 24]])
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert snapshot(out) == before
    invoke(*args, "--limit", 24, "--overwrite")
    assert json.loads(audit_json.read_text())["examples"] == 24
    assert json.loads((out / "compare.json").read_text())["reused"] == {"ls": []}
    for name, sub in (("diagnostics", ""), ("attack", "attacks"), ("eps_star", "eps_star")):
        assert load(out / "ls" / sub, name).provenance.data["n"] == 24
    # another seed changes eps* (FAB's draws), the attacks and the audit, not the diagnostics
    invoke(*args, "--limit", 24, "--overwrite", "--seed", 1)
    assert json.loads((out / "compare.json").read_text())["reused"] == {"ls": ["diagnostics"]}
    # an unchanged rerun reuses everything
    invoke(*args, "--limit", 24, "--overwrite", "--seed", 1)
    assert json.loads((out / "compare.json").read_text())["reused"] == {
        "ls": ["diagnostics", "eps_star", "attacks", "audit"]}


def test_an_interrupted_rewrite_leaves_no_record_to_reuse(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The record goes first: if writing the new table fails, the old record is gone too, so
    the folder's old provenance can never vouch for new (or half-written) files."""
    import epsl.results.records as records

    table = pd.DataFrame({"index": [0, 1], "correct": [True, False]})
    prov = Provenance("m.safetensors", "a" * 64, {"dataset": "digits", "n": 2, "sha256": "b"})
    Result("attack", {"n": 2}, prov, table).save(tmp_path)
    assert records.reusable(tmp_path, "attack", prov) is not None

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(records, "write_table", broken)
    with pytest.raises(OSError):
        Result("attack", {"n": 2}, prov, table).save(tmp_path)
    assert not (tmp_path / "attack.json").exists()
    assert records.reusable(tmp_path, "attack", prov) is None


def test_eps_star_without_its_points_is_recomputed(tmp_path: Path, smoothed: Path) -> None:
    """An eps_star record whose eps_star.safetensors is gone is not reused (the audit would need
    the points): compare finds eps* again."""
    out = tmp_path / "cmp"
    args = ["compare", smoothed, "--eps", "0.1", "--pgd-steps", 2, "--fmn-steps", 10,
            "--fab-steps", 5, "--no-figures", "--limit", 10, "--out", out]
    invoke(*args)
    (out / "ls" / "eps_star" / "eps_star.safetensors").unlink()
    invoke(*args, "--overwrite")
    assert "eps_star" not in json.loads((out / "compare.json").read_text())["reused"]["ls"]
    assert (out / "ls" / "eps_star" / "eps_star.safetensors").is_file()


def test_a_result_saved_without_tensors_leaves_no_old_ones(tmp_path: Path) -> None:
    """Re-saving a diagnostics or ε* result without its tensors removes the tensors an earlier
    run wrote there, so the folder is not complete and is never reused with another run's
    points."""
    table = pd.DataFrame({"index": [0, 1], "eps_l": [0.1, 0.2]})
    for name in ("diagnostics", "eps_star"):
        folder = tmp_path / name
        folder.mkdir()
        stale = folder / KINDS[name].tensors
        stale.write_bytes(b"another run's tensors")
        Result(name, {"n": 2}, ORIGIN, table).save(folder)
        assert not stale.exists() and reusable(folder, name, ORIGIN) is None
