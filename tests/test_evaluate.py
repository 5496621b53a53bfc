"""Tests of evaluation: metrics, the holdout protocol (same path as ``annotate run``), LOSO.

The corpus is fabricated: an EmoDB-like ``wav/SSTTTEV.wav`` tree whose
emotions differ by voice pitch.
"""

# Test names say what each test checks.
# ruff: noqa: D103

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np
import pytest
from conftest import speech_counts

from annotate.errors import InputError, ModelError, UsageError
from annotate.testing import TEST_FEATURES, create_model_folder, make_toy_emodb
from annotate.training.corpora import read_corpus
from annotate.training.evaluate import (
    classification_metrics,
    evaluate,
    expected_calibration_error,
    plot_confusion,
)

SR = 16000






@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return read_corpus("emodb", make_toy_emodb(tmp_path_factory.mktemp("emodb"), first_seed=100))


@pytest.fixture(scope="module")
def toy_speech(corpus) -> tuple[int, int]:
    """Recordings and segments of the toy corpus that the speech detector hears."""
    counts = speech_counts(corpus.items["path"], TEST_FEATURES)
    assert counts[0] >= 24  # a synthetic voice: most of it is speech
    return counts


@pytest.fixture(scope="module")
def model(corpus, tmp_path_factory):
    from annotate.training.train import train

    return train("emotion", [corpus], tmp_path_factory.mktemp("models") / "emo", epochs=3,
                 batch_size=8, learning_rate=1e-2, augment=False, features=TEST_FEATURES,
                 network={"filters": [8, 16, 16, 16]}, jobs=1, seed=0)


@pytest.fixture(scope="module")
def holdout(model, corpus):
    return evaluate(model.folder, [corpus], "holdout", jobs=1)


# --- metrics ----------------------------------------------------------------------------


def test_metrics_on_a_known_confusion():
    labels = ["a", "b", "c"]
    true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 1, 0, 2])
    probs = np.full((8, 3), 0.1)
    probs[np.arange(8), predicted] = 0.8
    metrics = classification_metrics(true, probs, labels)
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["per_class_recall"] == {"a": 0.75, "b": 1.0, "c": 0.5}
    assert metrics["uar"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)
    assert metrics["confusion"]["matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    # every confidence is 0.8 and accuracy 0.75: one bin, off by 0.05
    assert metrics["ece"] == pytest.approx(0.05)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    true = np.array([0] * 7 + [1] * 3)
    calibrated = np.tile([0.7, 0.3], (10, 1))
    assert expected_calibration_error(calibrated, true) == pytest.approx(0.0)
    overconfident = np.tile([0.99, 0.01], (10, 1))
    assert expected_calibration_error(overconfident, true) == pytest.approx(0.29)


def test_ece_of_a_calibrated_model_on_a_small_set_sits_within_its_floor():
    """On 120 recordings a calibrated model's binned ECE is far from 0: the floor says how far."""
    from annotate.training.metrics import ece_if_calibrated, top_label_ece

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5) * 0.6, 120)
    assert top_label_ece(probs.max(1), probs.argmax(1) == 2) == pytest.approx(
        expected_calibration_error(probs, np.full(120, 2)))
    confidence = probs.max(1)
    mean, p95 = ece_if_calibrated(confidence, draws=400)
    assert 0.03 < mean < p95 < 0.2
    calibrated = [top_label_ece(confidence, rng.random(120) < confidence) for _ in range(200)]
    assert 0.8 < np.mean(calibrated) / mean < 1.2
    assert np.mean(np.array(calibrated) > p95) < 0.1
    overconfident = rng.random(120) < confidence - 0.25
    assert top_label_ece(confidence, overconfident) > p95
    assert ece_if_calibrated(np.zeros(0)) == (0.0, 0.0)


def test_absent_label_has_no_recall_and_does_not_count_in_uar():
    metrics = classification_metrics(np.array([0, 0, 1]), np.eye(3)[[0, 1, 1]], ["a", "b", "c"])
    assert metrics["per_class_recall"]["c"] is None
    assert metrics["uar"] == pytest.approx((0.5 + 1.0) / 2)


# --- holdout ----------------------------------------------------------------------------


def test_holdout_result_shape(holdout, model, toy_speech):
    scored = toy_speech[0]
    assert holdout["protocol"] == "holdout"
    assert holdout["labels"] == list(model.labels)
    assert holdout["n_recordings"] == scored
    assert holdout["n_without_speech"] == 36 - scored
    assert np.sum(holdout["confusion"]["matrix"]) == scored
    assert holdout["confusion"]["labels"] == ["anger", "neutral", "sadness"]
    assert set(holdout["per_speaker"]) == {"emodb:03", "emodb:08", "emodb:09", "emodb:10"}
    assert sum(s["n_recordings"] for s in holdout["per_speaker"].values()) == scored
    for key in ("accuracy", "uar", "ece"):
        assert 0.0 <= holdout[key] <= 1.0
    assert holdout["per_segment"]["n"] == toy_speech[1] > scored
    assert "holdout" in holdout["split"]
    # the model was trained on these speakers: the result says so
    assert len(holdout["speakers_seen_in_training"]) == 4 and "warning" in holdout


def test_holdout_predictions_equal_annotate_run(holdout, model, corpus, tmp_path):
    from annotate.pipeline.run import run
    from annotate.views.summarize import per_recording, read_output

    language = create_model_folder(tmp_path / "lang", "language", ["de", "en"])
    run([corpus.root / "wav"], tmp_path / "out.parquet", language_model=language.folder,
        emotion_models={"*": str(model.folder)}, languages=["de"],
        window_s=TEST_FEATURES.segment_s, jobs=1)
    rows = per_recording(read_output(tmp_path / "out.parquet")).set_index("path")
    assert len(rows) == 36
    for prediction in holdout["predictions"]:
        row = rows.loc[Path(prediction["path"]).name]
        assert row["emotion"] == prediction["predicted"]
        expected = [row[f"emo_{label}"] for label in holdout["labels"]]
        assert np.allclose(prediction["probabilities"], expected, atol=1e-5)


def test_holdout_on_unseen_speakers_skips_unknown_labels(model, tmp_path):
    other = read_corpus("emodb", make_toy_emodb(tmp_path / "other", speakers=("11", "12"),
                                            emotions="WF"))
    result = evaluate(model.folder, [other], "holdout", jobs=1)
    assert result["skipped_labels"] == {"happiness": 6}
    anger = other.items[other.items["label"] == "anger"]["path"]
    scored, _ = speech_counts(anger, TEST_FEATURES)
    assert scored >= 1 and result["n_recordings"] == scored
    assert np.sum(result["confusion"]["matrix"]) == scored
    assert result["speakers_seen_in_training"] == [] and "warning" not in result
    assert result["per_class_recall"]["anger"] is not None
    assert result["per_class_recall"]["sadness"] is None


def test_bad_protocol_and_models_are_refused(model, corpus, tmp_path):
    with pytest.raises(UsageError, match=r"expected one of \[holdout, loso\]"):
        evaluate(model.folder, [corpus], "kfold")
    untrained = create_model_folder(tmp_path / "untrained", "emotion", ["anger", "sadness"])
    with pytest.raises(ModelError, match="hyperparameters"):
        evaluate(untrained.folder, [corpus], "loso", jobs=1)
    language = create_model_folder(tmp_path / "lang", "language", ["de", "en"])
    with pytest.raises(UsageError, match="no language labels"):
        evaluate(language.folder, [corpus], "holdout", jobs=1)
    neutral_only = create_model_folder(tmp_path / "other", "emotion", ["calm", "surprise"])
    with pytest.raises(InputError, match="has a label the model knows"):
        evaluate(neutral_only.folder, [corpus], "holdout", jobs=1)


def test_confusion_plot_needs_matplotlib(holdout, tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pip install matplotlib"):
            plot_confusion(holdout, tmp_path / "c.png")
        return
    written = plot_confusion(holdout, tmp_path / "c.png")
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- leave one speaker out --------------------------------------------------------------


def test_loso_retrains_per_speaker_and_pools_predictions(model, corpus, toy_speech):
    lines = []
    result = evaluate(model.folder, [corpus], "loso", jobs=1, progress=lines.append)
    assert result["protocol"] == "loso"
    assert [f["speaker"] for f in result["folds"]] == ["emodb:03", "emodb:08", "emodb:09",
                                                       "emodb:10"]
    for fold in result["folds"]:
        assert fold["speaker"] not in fold["validation_speakers"]
        assert 6 <= fold["n_recordings"] <= 9
        assert 1 <= fold["epochs_run"] <= model.training["hyperparameters"]["epochs"]
    assert result["n_recordings"] == toy_speech[0]
    assert sum(f["n_recordings"] for f in result["folds"]) == toy_speech[0]
    assert np.sum(result["confusion"]["matrix"]) == toy_speech[0]
    assert set(result["per_speaker"]) == {f["speaker"] for f in result["folds"]}
    assert result["pooled_uar"] == result["uar"]
    assert result["mean_fold_uar"] == pytest.approx(np.mean([f["uar"] for f in result["folds"]]))
    assert result["hyperparameters"]["learning_rate"] == 1e-2
    assert any(line.startswith("fold 4/4 (emodb:10): epoch 3/3") for line in lines)
    # same keys as holdout, so reports and plots take either
    assert set(result) >= {"accuracy", "uar", "ece", "per_class_recall", "confusion",
                           "per_speaker", "n_recordings", "split"}
