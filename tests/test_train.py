"""Tests of training: augmentation, networks, speaker splits, calibration, the model folder.

The corpus is fabricated: an EmoDB-like ``wav/SSTTTEV.wav`` tree whose
emotions differ by voice pitch (anger high, neutral middle, sadness low), so
that a tiny network can learn them in a few epochs.
"""

# Test names say what each test checks.
# ruff: noqa: D103

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np
import pandas as pd
import pytest

from annotate.errors import InputError, UsageError
from annotate.modelling.model_folder import read_model_folder
from annotate.testing import TEST_FEATURES, make_toy_emodb, voice
from annotate.training import augment
from annotate.training.corpora import read_corpus
from annotate.training.training_data import (
    check_speaker_independent,
    collect_items,
    load_crops,
    split_by_speaker,
)

SR = 16000
SPEAKERS = ("03", "08", "09", "10")
TINY = {"filters": [8, 16, 16, 16]}






@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return read_corpus("emodb", make_toy_emodb(tmp_path_factory.mktemp("emodb"), SPEAKERS))


TRAIN_ARGS = dict(epochs=4, batch_size=8, learning_rate=1e-2, features=TEST_FEATURES,
                  network=TINY, jobs=1, seed=3)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    from annotate.training.train import train

    lines = []
    folder = tmp_path_factory.mktemp("models") / "emo"
    spec = train("emotion", [corpus], folder, progress=lines.append, **TRAIN_ARGS)
    return spec, lines


# --- augmentation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["noise", "gain", "telephone", "reverb"])
def test_audio_augmentations_keep_shape_and_dtype_and_repeat_with_a_seed(name):
    x = voice(1.0, 150.0, 0)

    def apply(seed):
        rng = np.random.default_rng(seed)
        return {
            "noise": lambda: augment.add_noise(x, rng, 10.0, "pink"),
            "gain": lambda: augment.change_gain(x, rng.uniform(-6, 6)),
            "telephone": lambda: augment.telephone(x, SR),
            "reverb": lambda: augment.reverberate(x, 0.4, SR, rng),
        }[name]()

    first, again = apply(1), apply(1)
    assert first.shape == x.shape and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert not np.array_equal(first, x)
    assert np.abs(first).max() <= 1.0


def test_noise_is_added_at_the_requested_snr():
    x = voice(2.0, 150.0, 1)
    for snr_db in (0.0, 20.0):
        noisy = augment.add_noise(x, np.random.default_rng(0), snr_db, "white")
        noise = noisy.astype(np.float64) - x
        measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
        assert measured == pytest.approx(snr_db, abs=0.1)


def test_telephone_channel_removes_low_and_high_frequencies():
    t = np.arange(SR) / SR
    tones = {f: (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (100, 1000, 6000)}
    kept = {f: np.sqrt(np.mean(augment.telephone(x, SR)[2000:-2000] ** 2))
            / np.sqrt(np.mean(x**2)) for f, x in tones.items()}
    assert kept[1000] > 0.9
    assert kept[100] < 0.05 and kept[6000] < 0.05


def test_speed_changes_length_and_pitch_together():
    x = voice(1.0, 150.0, 2)
    faster = augment.change_speed(x, 1.1, SR)
    assert faster.dtype == np.float32
    assert faster.size == pytest.approx(x.size / 1.1, abs=2)
    assert np.array_equal(augment.change_speed(x, 1.0, SR), x)


def test_room_impulse_response_decays_by_60_db_over_rt60():
    response = augment.room_impulse_response(0.4, SR, np.random.default_rng(0))
    assert response[0] == 1.0 and response.size == int(0.4 * SR)
    early = np.sum(response[1 : SR // 20] ** 2)
    late = np.sum(response[-SR // 20 :] ** 2)
    assert 10 * np.log10(early / late) > 40


def test_augment_chain_is_deterministic_and_seed_dependent():
    x = voice(1.0, 150.0, 3)
    a = augment.augment_audio(x, np.random.default_rng(7), SR)
    b = augment.augment_audio(x, np.random.default_rng(7), SR)
    others = [augment.augment_audio(x, np.random.default_rng(s), SR) for s in range(8, 12)]
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert any(o.shape != a.shape or not np.array_equal(o, a) for o in others)


def test_spec_augment_masks_bands_and_frames_deterministically():
    features = np.random.default_rng(0).standard_normal((101, 32)).astype(np.float32) + 5
    original = features.copy()
    settings = augment.AugmentSettings(time_masks=2, max_time_mask_fraction=0.2,
                                       freq_masks=2, max_freq_mask_fraction=0.25)
    masked = [augment.spec_augment(features, np.random.default_rng(s), settings) for s in range(5)]
    again = augment.spec_augment(features, np.random.default_rng(0), settings)
    assert all(m.shape == features.shape and m.dtype == np.float32 for m in masked)
    assert np.array_equal(masked[0], again)
    assert any((m == 0).any() for m in masked)
    assert np.array_equal(features, original)  # the input is not masked in place


# --- networks ---------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["cnn", "crnn"])
def test_networks_output_logits_and_load_in_safe_mode(architecture, tmp_path):
    from annotate.modelling.inference import tensorflow
    from annotate.modelling.networks import build_network

    keras = tensorflow().keras
    model = build_network(architecture, TEST_FEATURES, 5, {"filters": [4, 8, 8]})
    assert model.input_shape == (None, TEST_FEATURES.n_frames, TEST_FEATURES.n_mels)
    assert model.output_shape == (None, 5)
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits, no softmax
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    x = np.random.default_rng(0).standard_normal((3, *model.input_shape[1:])).astype(np.float32)
    assert np.allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)


def test_statistics_networks_output_logits_and_load_in_safe_mode(tmp_path):
    from annotate.modelling.inference import tensorflow
    from annotate.modelling.networks import build_network

    keras = tensorflow().keras
    x = np.random.default_rng(0).standard_normal((3, TEST_FEATURES.n_frames, TEST_FEATURES.n_mels))
    x = x.astype(np.float32)
    for architecture, options in (("stats", {}), ("cnn_stats", {"filters": [4, 8]}),
                                  ("cnn", {"filters": [4, 8], "input_pool": [2, 2]})):
        model = build_network(architecture, TEST_FEATURES, 5, options)
        assert model.output_shape == (None, 5)
        model.save(tmp_path / f"{architecture}.keras")
        loaded = keras.models.load_model(tmp_path / f"{architecture}.keras", compile=False,
                                         safe_mode=True)
        assert np.allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)


def test_statistics_branch_computes_the_documented_functionals():
    import scipy.fft

    from annotate.modelling.inference import tensorflow
    from annotate.modelling.networks import build_network

    keras = tensorflow().keras
    model = build_network("stats", TEST_FEATURES, 3, {"n_cepstra": 6})
    statistics = keras.Model(model.input, model.get_layer("statistics").output)
    x = np.random.default_rng(1).standard_normal((2, TEST_FEATURES.n_frames, TEST_FEATURES.n_mels))
    x = x.astype(np.float32)
    got = statistics(x, training=False).numpy()
    expected = []
    for segment in x:
        streams = (segment, scipy.fft.dct(segment, type=2, norm="ortho", axis=1)[:, :6],
                   np.diff(segment, axis=0))
        expected.append(np.concatenate([
            f for a in streams for f in (a.mean(0), (a**2).mean(0), a.max(0), -a.min(0))
        ]))
    assert np.allclose(got, np.array(expected), atol=1e-4)


def test_default_networks_are_small():
    from annotate.features import FeatureParams
    from annotate.modelling.networks import build_network

    for architecture in ("cnn", "crnn", "stats", "cnn_stats"):
        params = build_network(architecture, FeatureParams(), 7).count_params()
        assert 2_000 < params < 350_000  # < 1.5 MB saved in float32


def test_unknown_architecture_or_option_lists_the_valid_ones():
    from annotate.modelling.networks import network_options

    with pytest.raises(UsageError, match=r"expected one of \[cnn, cnn_stats, crnn, stats\]"):
        network_options("transformer")
    with pytest.raises(UsageError, match="dropout"):
        network_options("cnn", {"dropuot": 0.1})


# --- data and splits --------------------------------------------------------------------


def test_crops_are_speech_segments_with_the_shared_feature_function(corpus):
    from annotate.features import segment_features

    items = collect_items([corpus], "emotion")
    items = items[items["path"].str.contains(r"/03a0\dNa")]  # 1.2, 1.5 and 1.8 s
    crops, failures = load_crops(items, TEST_FEATURES, hop_s=0.5, keep_audio=True, jobs=1)
    assert not failures
    assert crops.features.shape[1:] == (TEST_FEATURES.n_frames, TEST_FEATURES.n_mels)
    # 1.2 s, 1.5 s, 1.8 s files cut into 1 s crops every 0.5 s: 2 + 2 + 3
    assert list(crops.meta.groupby("path").size()) == [2, 2, 3]
    assert np.array_equal(crops.features[0], segment_features(crops.waveform(0), TEST_FEATURES))
    assert set(crops.meta.columns) >= {"path", "speaker", "label", "corpus", "start_s", "end_s"}


def test_split_is_speaker_independent_and_seeded(corpus):
    items = collect_items([corpus], "emotion")
    split = split_by_speaker(items, 0.25, seed=1)
    assert not set(split.train["speaker"]) & set(split.validation["speaker"])
    assert len(split.train) + len(split.validation) == len(items)
    again = split_by_speaker(items, 0.25, seed=1)
    assert again.describe() == split.describe()
    assert split.validation["speaker"].nunique() == 1


def test_speaker_overlap_is_refused():
    with pytest.raises(InputError, match="emodb:03"):
        check_speaker_independent(["emodb:03", "emodb:08"], ["emodb:03"])


def test_official_dev_split_is_used_and_test_speakers_left_out():
    items = pd.DataFrame({
        "path": [f"/cv/{i}.mp3" for i in range(6)],
        "label": ["de"] * 6,
        "speaker": ["cv:a", "cv:a", "cv:b", "cv:c", "cv:d", "cv:d"],
        "corpus": ["commonvoice"] * 6,
        "language": ["de"] * 6,
        "split": ["train", None, "dev", "test", "train", "train"],
    })
    split = split_by_speaker(items, 0.5, seed=0)
    assert sorted(split.train["speaker"].unique()) == ["cv:a", "cv:d"]
    assert list(split.validation["speaker"].unique()) == ["cv:b"]
    assert "official" in split.methods["commonvoice"]


def test_one_speaker_cannot_be_split(corpus):
    items = collect_items([corpus], "emotion")
    with pytest.raises(InputError, match="at least two speakers"):
        split_by_speaker(items[items["speaker"] == "emodb:03"], 0.2)


def test_corpus_for_another_task_is_refused(corpus):
    with pytest.raises(UsageError, match="no language labels"):
        collect_items([corpus], "language")
    with pytest.raises(UsageError, match=r"expected one of \[attitude, emotion, language\]"):
        collect_items([corpus], "mood")


# --- calibration ------------------------------------------------------------------------


def test_temperature_fit_recovers_the_temperature_of_the_data():
    from annotate.training.calibration import fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 4))
    scaled = logits / 2.0
    probs = np.exp(scaled - scaled.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    true = np.array([rng.choice(4, p=p) for p in probs])
    assert fit_temperature(logits, true) == pytest.approx(2.0, rel=0.1)


def test_confidence_temperature_calibrates_the_recordings_top_label():
    """Top labels right as often as softmax(logits / 1.5) says, the others' labels uniform.

    The log-likelihood's temperature is pulled by the labels that are not
    the top; the confidence temperature matches the top probability of each
    recording (two segments each) to how often the top label is right.
    """
    from annotate.modelling.posteriors import recording_means, softmax
    from annotate.training.calibration import fit_confidence_temperature, fit_temperature
    from annotate.training.metrics import expected_calibration_error

    rng = np.random.default_rng(1)
    n_rec, k = 3000, 5
    shared = rng.normal(0, 2.5, (n_rec, k))
    logits = np.repeat(shared, 2, axis=0) + rng.normal(0, 0.3, (2 * n_rec, k))
    owner, durations = np.repeat(np.arange(n_rec), 2), np.ones(2 * n_rec)
    top_true = recording_means(softmax(logits, 1.5), owner, durations, n_rec)
    top = top_true.argmax(1)
    right = rng.random(n_rec) < top_true.max(1)
    other = (top + rng.integers(1, k, n_rec)) % k
    true = np.where(right, top, other)

    t_conf = fit_confidence_temperature(logits, owner, durations, true)
    t_nll = fit_temperature(logits, true[owner])
    assert t_conf == pytest.approx(1.5, rel=0.1)
    assert abs(t_nll - 1.5) > 0.15
    rec = recording_means(softmax(logits, t_conf), owner, durations, n_rec)
    assert abs(rec.max(1).mean() - np.mean(rec.argmax(1) == true)) < 0.02
    nll_rec = recording_means(softmax(logits, t_nll), owner, durations, n_rec)
    assert expected_calibration_error(rec, true) < expected_calibration_error(nll_rec, true)
    weights = np.where(np.arange(n_rec) < n_rec // 2, 1.0, 0.0)
    assert fit_confidence_temperature(logits, owner, durations, true, weights) == pytest.approx(
        1.5, rel=0.15)


# --- training end to end ----------------------------------------------------------------


def test_trained_folder_loads_and_predicts(trained):
    from annotate.modelling.inference import Classifier

    spec, _ = trained
    read = read_model_folder(spec.folder)
    assert read.labels == ("anger", "neutral", "sadness")  # sorted labels present
    assert read.languages == ("de",)
    assert read.task == "emotion" and read.features == TEST_FEATURES
    assert read.temperature > 0
    probs = Classifier(read).load().predict(
        np.zeros((2, TEST_FEATURES.n_frames, TEST_FEATURES.n_mels), np.float32))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1)
    assert not (spec.folder.parent / "emo.partial").exists()
    assert (spec.folder / "model.keras").stat().st_size < 1_500_000


def test_trained_folder_records_metrics_split_and_hyperparameters(trained):
    spec, _ = trained
    raw = json.loads((spec.folder / "model.json").read_text())
    metrics, training = raw["metrics"], raw["training"]
    for key in ("accuracy", "uar", "ece"):
        assert 0.0 <= metrics[key] <= 1.0
        assert 0.0 <= metrics["per_segment"][key] <= 1.0
    assert set(metrics["per_class_recall"]) == {"anger", "neutral", "sadness"}
    assert np.sum(metrics["confusion"]["matrix"]) == metrics["validation_data"]["recordings"]
    split = training["split"]
    assert split["train_speakers"] and split["validation_speakers"]
    assert not set(split["train_speakers"]) & set(split["validation_speakers"])
    assert metrics["validation_data"]["speakers"] == split["validation_speakers"]
    assert training["hyperparameters"]["seed"] == 3
    assert training["hyperparameters"]["augment"] is True
    assert training["hyperparameters"]["augmentation"] == augment.AugmentSettings().to_dict()
    assert 1 <= training["epochs_run"] <= 4
    assert training["corpora"][0]["name"] == "emodb" and training["corpora"][0]["files"] == 36
    card = (spec.folder / "MODEL_CARD.md").read_text()
    assert "CC0" in card and "Intended use" in card and "Limits" in card


def test_learnable_task_reaches_high_validation_uar(trained):
    spec, lines = trained
    # 9 validation recordings of 3 emotions: chance is 0.33, one miss costs 0.11
    # (TensorFlow's kernels differ between CPUs: one miss on some, none on others).
    assert spec.metrics["uar"] >= 0.75
    assert any(line.startswith("epoch 1/4") and "val UAR" in line for line in lines)


def test_same_seed_gives_identical_weights(corpus, trained, tmp_path):
    from annotate.modelling.inference import tensorflow
    from annotate.training.train import train

    keras = tensorflow().keras
    spec, _ = trained
    again = train("emotion", [corpus], tmp_path / "again", **TRAIN_ARGS)
    first = keras.models.load_model(spec.weights_path, compile=False).get_weights()
    second = keras.models.load_model(again.weights_path, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert again.temperature == spec.temperature
    assert again.metrics["uar"] == spec.metrics["uar"]


def test_cross_lingual_languages_and_bad_arguments(corpus, trained, tmp_path):
    from annotate.training.train import model_languages, train

    items = collect_items([corpus], "emotion")
    assert model_languages("emotion", ["anger"], items, ["*"]) == ("*",)
    assert model_languages("emotion", ["anger"], items, None) == ("de",)
    assert model_languages("language", ["de", "fr"], items, None) == ("de", "fr")
    with pytest.raises(UsageError, match="ISO 639-1"):
        model_languages("emotion", ["anger"], items, ["german"])
    with pytest.raises(UsageError, match="cannot be mixed"):
        train("emotion", [corpus], tmp_path / "x", languages=["*", "de"])
    spec, _ = trained
    with pytest.raises(UsageError, match="--overwrite"):
        train("emotion", [corpus], spec.folder, **TRAIN_ARGS)
    with pytest.raises(UsageError, match=r"expected one of \[cnn, cnn_stats, crnn, stats\]"):
        train("emotion", [corpus], tmp_path / "x", architecture="resnet")
    with pytest.raises(UsageError, match="epochs must be at least 1"):
        train("emotion", [corpus], tmp_path / "x", epochs=0)


def test_fine_tuning_starts_from_the_donor_and_records_it(corpus, trained, tmp_path):
    from annotate.modelling.inference import tensorflow
    from annotate.modelling.model_folder import file_sha256
    from annotate.training.train import train

    keras = tensorflow().keras
    donor, _ = trained
    lines = []
    args = {**TRAIN_ARGS, "epochs": 2}
    tuned = train("emotion", [corpus], tmp_path / "tuned", init_from=donor.folder,
                  freeze_initialised=True, progress=lines.append, **args)
    record = tuned.training["initialised_from"]
    assert record["name"] == donor.name
    assert record["keras_sha256"] == file_sha256(donor.weights_path)
    assert record["frozen"] is True
    copied = tuned.training["layers_initialised"]
    assert "b0_conv" in copied and "logits" not in copied
    assert any(line.startswith("initialised ") and "(kept fixed)" in line for line in lines)
    theirs = keras.models.load_model(donor.weights_path, compile=False)
    ours = keras.models.load_model(tuned.weights_path, compile=False)
    for name in copied:  # frozen: still the donor's weights after training
        pairs = zip(theirs.get_layer(name).get_weights(), ours.get_layer(name).get_weights(),
                    strict=True)
        for a, b in pairs:
            assert np.array_equal(a, b)
    assert not np.array_equal(theirs.get_layer("logits").get_weights()[0],
                              ours.get_layer("logits").get_weights()[0])
    scratch = train("emotion", [corpus], tmp_path / "scratch", **args)
    assert scratch.training["initialised_from"] is None


def test_fine_tuning_refuses_a_donor_that_does_not_fit(corpus, trained, tmp_path):
    from annotate.errors import ModelError
    from annotate.training.train import train

    donor, _ = trained
    with pytest.raises(ModelError, match="mel bands"):
        train("emotion", [corpus], tmp_path / "x", init_from=donor.folder,
              **{**TRAIN_ARGS, "features": dataclasses.replace(TEST_FEATURES, n_mels=12)})
    with pytest.raises(ModelError, match="no layer matches"):
        train("emotion", [corpus], tmp_path / "y", init_from=donor.folder,
              **{**TRAIN_ARGS, "architecture": "stats", "network": {}})


def test_worker_and_command_modules_do_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, annotate.training.training_data, annotate.training.augment, "
            "annotate.cli.training, annotate.training.evaluate, annotate.training.train, "
            "annotate.modelling.networks, annotate.training.encoding, annotate.training.search, "
            "annotate.training.calibration, annotate.training.cards, annotate.training.fitting, "
            "annotate.training.evaluate_heads; "
            "sys.exit('tensorflow' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
