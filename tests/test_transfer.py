"""The cross-lingual head chosen for transfer: corpora centred, one left out; runs centred."""

# Test names say what each test checks.
# ruff: noqa: D103

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import run_metadata, sorted_table, write_audio

import annotate
from annotate.errors import ModelError
from annotate.modelling.model_folder import read_model_folder
from annotate.modelling.posteriors import centre_on_run, softmax
from annotate.pipeline.centring import Centring
from annotate.testing import voice
from annotate.training.encoding import EncodedRecordings
from annotate.training.transfer import (
    centre_corpora,
    corpus_folds,
    learnable_elsewhere,
    shared_labels,
    transfer_score,
)


def test_centring_a_run_is_a_linear_head_on_the_runs_states_centred():
    rng = np.random.default_rng(0)
    k, d, n, temperature = 4, 6, 30, 1.7
    weights, bias = rng.standard_normal((d, k)), rng.standard_normal(k)
    training_mean = rng.standard_normal(d)
    states = rng.standard_normal((n, d)) + 3 * rng.standard_normal(d)  # the run sits elsewhere
    durations = rng.uniform(1, 3, n)
    probs = softmax((states @ weights + bias) / temperature)
    mean_logits = training_mean @ weights + bias
    got = centre_on_run(probs, durations, mean_logits, temperature, prior_s=0.0)
    run_mean = np.average(states, axis=0, weights=durations)
    want = softmax(((states - run_mean + training_mean) @ weights + bias) / temperature)
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert np.abs(got - probs).max() > 0.1


def test_a_short_run_keeps_its_probabilities_and_a_long_one_is_heard_relative_to_itself():
    rng = np.random.default_rng(1)
    probs = softmax(rng.standard_normal((200, 3)) + np.array([3.0, 0.0, 0.0]))
    mean_logits = np.zeros(3)
    one = centre_on_run(probs[:1], np.array([3.0]), mean_logits, 1.0, prior_s=1e6)
    np.testing.assert_allclose(one, probs[:1], atol=1e-5)
    # a run with every segment leaning to label 0: centred, label 0 is no longer most of it
    before = np.mean(probs.argmax(axis=1) == 0)
    shrunk = centre_on_run(probs, np.full(200, 3.0), mean_logits, 1.0, prior_s=10.0)
    full = centre_on_run(probs, np.full(200, 3.0), mean_logits, 1.0, prior_s=0.0)
    assert before > 0.9
    assert np.mean(full.argmax(axis=1) == 0) < 0.6
    assert np.mean(full.argmax(axis=1) == 0) <= np.mean(shrunk.argmax(axis=1) == 0) < before
    assert centre_on_run(probs[:0], np.zeros(0), mean_logits, 1.0, 10.0).shape == (0, 3)


def encoded_corpora(seed: int = 0) -> EncodedRecordings:
    """Three corpora, each offset as a whole, the same two emotions in each (a third in 'c')."""
    rng = np.random.default_rng(seed)
    rows, states, durations = [], [], []
    for c, corpus in enumerate("abc"):
        offset = rng.standard_normal((3, 8)) * 5
        for i in range(90):
            kinds = ("calm", "anger", "boredom") if corpus == "c" else ("calm", "anger")
            label = kinds[i % len(kinds)]
            signal = {"calm": -3.0, "anger": 3.0, "boredom": 0.0}[label]
            s = offset + signal + rng.standard_normal((4, 3, 8)) * 0.3
            rows.append({"path": f"{corpus}/{i}.wav", "corpus": corpus, "label": label,
                         "speaker": f"{corpus}{i % 4}"})
            states.append(s.astype(np.float32))
            durations.append(np.array([3.0, 3.0, 3.0, 2.0]))
    return EncodedRecordings(pd.DataFrame(rows), states, durations)


def test_each_corpus_is_moved_to_one_common_mean_and_keeps_its_differences_inside():
    data = encoded_corpora()
    centred, common = centre_corpora(data)
    corpus = data.meta["corpus"].to_numpy()
    for name in "abc":
        mine = np.flatnonzero(corpus == name)
        states = np.concatenate([centred.states[i] for i in mine])
        weights = np.concatenate([data.durations[i] for i in mine])
        np.testing.assert_allclose(np.average(states, axis=0, weights=weights), common,
                                   atol=1e-4)
        np.testing.assert_allclose(centred.states[mine[0]] - centred.states[mine[1]],
                                   data.states[mine[0]] - data.states[mine[1]], atol=1e-4)
    assert [list(f) for f in corpus_folds(data)] == [list(range(0, 90)), list(range(90, 180)),
                                                      list(range(180, 270))]


def test_only_the_emotions_every_corpus_has_are_scored_and_learnable_from_the_others():
    y = np.array([0, 1, 0, 1, 0, 1, 2])
    corpus = np.array([0, 0, 1, 1, 2, 2, 2])
    assert list(shared_labels(y, corpus, 3)) == [0, 1]
    assert list(learnable_elsewhere(y, corpus)) == [True] * 6 + [False]
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.1, 0.6, 0.3],
                      [0.5, 0.4, 0.1], [0.4, 0.5, 0.1], [0.0, 0.0, 1.0]])
    # corpus 1's first recording is label 0 among the shared ones (0.2 > 0.1): all right
    assert transfer_score(y, probs, corpus, np.array([0, 1])) == 1.0
    probs[4] = [0.1, 0.2, 0.7]
    assert transfer_score(y, probs, corpus, np.array([0, 1])) == pytest.approx((1 + 1 + 0.5) / 3)


def test_a_cross_lingual_head_is_chosen_leaving_one_corpus_out(tmp_path):
    from annotate.testing import create_backbone_folder
    from annotate.training.heads import train_head

    backbone = create_backbone_folder(tmp_path / "tiny-whisper", n_layers=2, width=4,
                                      litert=False)
    data = encoded_corpora()
    labels = ("calm", "anger", "boredom")
    spec = train_head("emotion", data, labels, ("*",), backbone, "keras", tmp_path / "multi",
                      "multi", trials=2, n_folds=2, seed=0, report=lambda text: None)
    loco = spec.metrics["leave_one_corpus_out"]
    assert loco["labels"] == ["calm", "anger"] and set(loco["corpora"]) == {"a", "b", "c"}
    # each corpus sits far from the others, yet centred the emotions carry over
    assert loco["mean_uar"] > 0.9
    assert "leave one corpus out" in spec.training["search"]["objective"]
    assert all(h["settings"]["hidden"] == 0 for h in spec.training["search"]["history"])
    assert spec.run_centring is not None and len(spec.run_centring.mean_logits) == 3
    assert read_model_folder(tmp_path / "multi").run_centring == spec.run_centring
    # a head for one language is chosen on its speakers, as before
    plain = train_head("emotion", data, labels, ("de",), backbone, "keras", tmp_path / "de",
                       "de", trials=0, n_folds=2, seed=0, report=lambda text: None)
    assert plain.run_centring is None and "leave_one_corpus_out" not in plain.metrics


@pytest.fixture(scope="module")
def centred_models(models, tmp_path_factory):
    """The test models, the cross-lingual one with a run_centring entry."""
    root = tmp_path_factory.mktemp("centred")
    shutil.copytree(models["emotion-multi"], root / "emotion-multi")
    spec_file = root / "emotion-multi" / "model.json"
    raw = json.loads(spec_file.read_text())
    raw["run_centring"] = {"mean_logits": [0.5 * i for i in range(len(raw["labels"]))],
                           "prior_s": 10.0, "fitted_on": "tests"}
    spec_file.write_text(json.dumps(raw))
    return root / "emotion-multi"


def test_a_run_centres_the_rows_of_the_cross_lingual_head_and_only_those(
        models, centred_models, tmp_path):
    corpus = tmp_path / "corpus"
    for i in range(6):
        write_audio(corpus / f"{i}.wav", voice(3.0, 140.0 + 20 * i, seed=i), 16000)
    plain, centred = tmp_path / "plain.parquet", tmp_path / "centred.parquet"
    common = {"language_model": models["language"], "languages": ["fr"], "jobs": 1}
    annotate.run([corpus], plain, emotion_models={"*": models["emotion-multi"]}, **common)
    annotate.run([corpus], centred, emotion_models={"*": centred_models}, **common)
    spec = read_model_folder(centred_models)
    import pyarrow.parquet as pq

    expected, summary = Centring.of_models(type("Set", (), {"specs": [spec]})).adapt(
        pq.read_table(plain))
    got, before = sorted_table(centred), sorted_table(plain)
    want = expected.to_pandas().sort_values(["path", "start_s"]).reset_index(drop=True)
    emotions = [c for c in got.columns if c.startswith("emo")]
    pd.testing.assert_frame_equal(got[emotions], want[emotions])
    probabilities = [c for c in emotions if c.startswith("emo_")]
    assert (got[probabilities] - before[probabilities]).abs().max().max() > 1e-4
    others = [c for c in got.columns if not c.startswith("emo")]
    pd.testing.assert_frame_equal(got[others], before[others])
    meta = run_metadata(centred)
    assert meta["run_centring"]["models"]["emotion-multi"]["segments"] == int(got["speech"].sum())
    assert "run_centring" not in run_metadata(plain)
    from rich.console import Console

    from annotate.views.report_text import print_report
    from annotate.views.summarize import summarize

    console = Console(record=True, width=200)
    print_report(console, summarize(centred))
    assert "emotions relative to the run: emotion-multi (" in console.export_text()
    # the same table whatever the jobs and batch size
    annotate.run([corpus], tmp_path / "two.parquet", emotion_models={"*": centred_models},
                 batch_size=1, **{**common, "jobs": 2})
    pd.testing.assert_frame_equal(sorted_table(tmp_path / "two.parquet"), got)


def test_a_model_folder_refuses_a_run_centring_it_cannot_use(centred_models, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(centred_models, folder)
    raw = json.loads((folder / "model.json").read_text())
    raw["run_centring"]["mean_logits"] = [0.0]
    (folder / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="run_centring"):
        read_model_folder(folder)


def test_rows_of_other_models_pass_through_the_centring_untouched():
    table = pa.table({"path": ["a", "b"], "start_s": [0.0, 0.0], "end_s": [3.0, 3.0],
                      "emotion_model": ["emotion-de", None], "emotion": ["anger", None],
                      "emotion_p": [0.7, None],
                      **{f"emo_{e}": [0.1, None] for e in annotate.labels.EMOTIONS}})
    centring = Centring({"emotion-multi": (None, 1.0, ())})
    out, summary = centring.adapt(table)
    assert out.equals(table) and summary == {"models": {}}
