"""The scores file carries the record of the model that wrote it: `tpwng evaluate` needs no
checkpoint, refuses an older scores file with one clear error and, given `--model`, checks that
the scores come from it; `load_scorer` reads the checkpoint and CLIP once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest

from tpwng.cli import main as tpwng_main
from tpwng.evaluate import ResultsError
from tpwng.evaluate.scores_file import MODEL_RECORD, model_record, read_model_record
from tpwng.evaluate.tables import evaluate
from tpwng.features.store import StoreError, h5_create
from tpwng.files import atomic_path
from tpwng.scoring import scorer as scorer_module
from tpwng.scoring.scorer import load_scorer
from tpwng.train.checkpoint import load_checkpoint


def _rewritten(src: Path, dst: Path, drop: tuple[str, ...] = (), **attrs) -> Path:
    """A copy of the scores file `src` without the attributes `drop` and with `attrs` set."""
    with h5py.File(src, "r") as old, atomic_path(dst) as tmp, h5_create(tmp) as new:
        for key, value in old.attrs.items():
            if key not in drop:
                new.attrs[key] = value
        for key, value in attrs.items():
            new.attrs[key] = value
        for group in old:
            old.copy(old[group], new, group)
    return dst


def _cli(s: dict, d: Path, scores: Path, prefix: Path, *extra: str) -> int:
    return tpwng_main(["evaluate", "--settings", json.dumps(s), "--manifest", str(d / "m.tsv"),
                       "--scores", str(scores), "--out-prefix", str(prefix), *extra])


def test_the_scores_file_records_the_model_that_wrote_it(scored):
    _, d = scored
    meta = load_checkpoint(d / "model.pt")["meta"]
    assert read_model_record(d / "scores.h5") == model_record(meta)
    assert list(model_record(meta)) == list(MODEL_RECORD)


def test_evaluate_works_from_the_scores_file_alone(scored, tmp_path):
    s, d = scored
    meta = load_checkpoint(d / "model.pt")["meta"]
    with_model = evaluate(s, d / "m.tsv", d / "scores.h5", d / "model.pt",
                          str(tmp_path / "a"))
    alone = tmp_path / "alone"  # the manifest and scores, no checkpoint anywhere near
    alone.mkdir()
    shutil.copy(d / "m.tsv", alone / "m.tsv")
    shutil.copy(d / "scores.h5", alone / "scores.h5")
    assert _cli(s, alone, alone / "scores.h5", tmp_path / "b") == 0
    full = json.loads((tmp_path / "b_metrics.json").read_text())
    assert full["metrics"] == with_model["metrics"]
    assert {k: full[k] for k in MODEL_RECORD} == model_record(meta)
    assert {k: full[k] for k in MODEL_RECORD} == {k: with_model[k] for k in MODEL_RECORD}
    assert full["settings_hash"] == meta["settings_hash"] and full["seed"] == meta["seed"]


def test_an_older_scores_file_is_one_clear_error(scored, tmp_path, capsys):
    s, d = scored
    old = _rewritten(d / "scores.h5", tmp_path / "old.h5", drop=tuple(MODEL_RECORD))
    with pytest.raises(StoreError, match=f"{old}: no record of the model that scored it.*"
                                         "score again: snakemake --forcerun infer"):
        evaluate(s, d / "m.tsv", old, None, str(tmp_path / "x"))
    assert _cli(s, d, old, tmp_path / "y") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(old) in err[0] and "snakemake --forcerun infer" in err[0]
    assert not (tmp_path / "y_metrics.json").exists()


@pytest.mark.parametrize("key", ["settings_hash", "seed"])
def test_model_must_be_the_checkpoint_that_wrote_the_scores(scored, tmp_path, capsys, key):
    s, d = scored
    other = {"settings_hash": "0" * 16, "seed": 12345}[key]
    scores = _rewritten(d / "scores.h5", tmp_path / "other.h5", **{key: other})
    with pytest.raises(ResultsError, match=f"{scores} was scored by a model of {key} {other}, "
                                           f"but {d / 'model.pt'} has {key}"):
        evaluate(s, d / "m.tsv", scores, d / "model.pt", str(tmp_path / "x"))
    assert _cli(s, d, scores, tmp_path / "y", "--model", str(d / "model.pt")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "forcerun infer" in err[0]
    assert not (tmp_path / "y_metrics.json").exists()
    # the file the checkpoint wrote passes the check
    assert _cli(s, d, d / "scores.h5", tmp_path / "z", "--model", str(d / "model.pt")) == 0


@pytest.mark.parametrize("images", [False, True])
def test_load_scorer_reads_the_checkpoint_once_and_clip_once(scored, monkeypatch, images):
    s, d = scored
    calls = {"checkpoint": 0, "clip": 0}
    real_checkpoint, real_clip = scorer_module.load_checkpoint, scorer_module.load_clip

    def counted_checkpoint(*args, **kwargs):
        calls["checkpoint"] += 1
        return real_checkpoint(*args, **kwargs)

    def counted_clip(*args, **kwargs):
        calls["clip"] += 1
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(scorer_module, "load_checkpoint", counted_checkpoint)
    monkeypatch.setattr(scorer_module, "load_clip", counted_clip)
    # torch.load and open_clip's model factory are the only ways to either: count them too
    import open_clip
    import torch

    loads = {"torch": 0, "open_clip": 0}
    real_torch_load, real_create = torch.load, open_clip.create_model

    def counted_torch_load(*args, **kwargs):
        loads["torch"] += 1
        return real_torch_load(*args, **kwargs)

    def counted_create(*args, **kwargs):
        loads["open_clip"] += 1
        return real_create(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counted_torch_load)
    monkeypatch.setattr(open_clip, "create_model", counted_create)
    scorer = load_scorer(d / "model.pt", "cpu", settings=None if images else s, images=images)
    assert calls == {"checkpoint": 1, "clip": 1}
    assert loads == {"torch": 1, "open_clip": 1}
    assert scorer.text is not None and scorer.classes == s["classes"]
    assert (scorer.encoder is not None) == images
    if images:  # the encoder is the image tower of the one CLIP model loaded
        assert scorer.extraction.stride == int(s["extraction"]["stride"])


def _with_groups(src: Path, dst: Path, skip: str = "", broken: str = "") -> Path:
    """A copy of `src` without the group `skip`, and with the first array of group `broken`
    replaced by a 1-D one (the wrong shape for class probabilities)."""
    with h5py.File(src, "r") as old, atomic_path(dst) as tmp, h5_create(tmp) as new:
        for key, value in old.attrs.items():
            new.attrs[key] = value
        for group in old:
            if group == skip:
                continue
            old.copy(old[group], new, group)
            if group == broken:
                first = sorted(new[group])[0]
                del new[group][first]
                new[group][first] = [0.5, 0.5]
    return dst


def test_the_viewer_reads_class_probabilities_only_where_they_are_whole(scored, tmp_path):
    from tpwng.evaluate.scores_file import read_class_probabilities

    _, d = scored
    full = read_class_probabilities(d / "scores.h5")
    assert full and all(p.ndim == 2 for _, p in full.values())
    older = _with_groups(d / "scores.h5", tmp_path / "older.h5", skip="class_probs")
    assert read_class_probabilities(older) == {}  # scored before they were written
    damaged = _with_groups(d / "scores.h5", tmp_path / "damaged.h5", broken="class_probs")
    with pytest.raises(StoreError, match="class_probs"):
        read_class_probabilities(damaged)
