"""Tests of evaluating heads on a backbone: holdout through the run's path, and LOSO.

A tiny random Whisper-shaped backbone and untrained heads on it
(``annotate.testing``); the corpus is fabricated in EmoDB's layout
(``wav/SSTTTEV.wav``, emotions differing by voice pitch), plus a tone that
holds no speech and a file that is not audio.
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
import pytest
import soundfile as sf
from conftest import speech_counts

from annotate.errors import InputError, ModelError, UsageError
from annotate.modelling.model_folder import read_model_folder, write_model_folder
from annotate.testing import create_backbone_folder, create_head_folder, make_toy_emodb, tone
from annotate.training.corpora import read_corpus
from annotate.training.evaluate import evaluate

SR = 16000
EMOTIONS = ["anger", "neutral", "sadness"]
#: What LOSO retrains with: the shape of ``training.settings`` that ``annotate train`` writes.
SETTINGS = {"layers": [1, 2], "hidden": 0, "l2": 1e-4, "dropout": 0.0,
            "learning_rate": 1e-2, "epochs": 30}


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    """Encoded features go to a temporary cache, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANNOTATE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = make_toy_emodb(tmp_path_factory.mktemp("emodb"), first_seed=200)
    sf.write(root / "wav" / "10a05Wa.wav", tone(2.0), SR)  # no speech
    (root / "wav" / "09a05Na.wav").write_bytes(b"not audio at all")  # unreadable
    return read_corpus("emodb", root)


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict:
    """A backbone and, beside it, an emotion head (with training settings) and a language head."""
    root = tmp_path_factory.mktemp("models")
    backbone = create_backbone_folder(root / "tiny-backbone", n_layers=2)
    emotion = create_head_folder(root / "emotion", "emotion", EMOTIONS, backbone, layers=(1, 2),
                                 languages=["de"], seed=1)
    emotion = dataclasses.replace(emotion, temperature=1.5,
                                  training={"settings": SETTINGS, "seed": 3})
    write_model_folder(emotion, "# emotion\n\nAn untrained head for tests.\n")
    language = create_head_folder(root / "language", "language", ["de", "en"], backbone,
                                  layers=(2,), languages=["de", "en"], seed=2,
                                  switch_probability=0.1)
    return {"backbone": backbone, "emotion": read_model_folder(emotion.folder),
            "language": language}


@pytest.fixture(scope="module")
def toy_speech(heads, corpus) -> tuple[int, int]:
    """Recordings and segments of the 36 toy recordings that the speech detector hears."""
    toy = corpus.items[~corpus.items["path"].str.contains("10a05Wa|09a05Na")]
    counts = speech_counts(toy["path"], heads["backbone"].features)
    assert counts[0] >= 24  # a synthetic voice: most of it is speech
    return counts


@pytest.fixture(scope="module")
def holdout(heads, corpus):
    return evaluate(heads["emotion"].folder, [corpus], "holdout", jobs=1)


@pytest.fixture(scope="module")
def run_rows(heads, corpus, tmp_path_factory):
    """Per-recording rows of ``annotate run`` with the same heads (language given, then not).

    The run reads the recordings that hold speech (a manifest): what the
    evaluation's predictions cover.
    """
    import pandas as pd

    from annotate.pipeline.run import run
    from annotate.views.summarize import per_recording, read_output

    out = tmp_path_factory.mktemp("run")
    manifest = out / "speech.csv"
    speech = corpus.items[~corpus.items["path"].str.contains("10a05Wa|09a05Na")]
    pd.DataFrame({"path": speech["path"]}).to_csv(manifest, index=False)
    rows = {}
    for name, languages in (("known", ["de"]), ("detected", None)):
        run([manifest], out / f"{name}.parquet",
            language_model=heads["language"].folder,
            emotion_models={"de": heads["emotion"].folder}, languages=languages,
            window_s=heads["backbone"].features.segment_s, jobs=1)
        rows[name] = per_recording(read_output(out / f"{name}.parquet")).set_index("path")
    return rows


# --- holdout ----------------------------------------------------------------------------


def test_holdout_of_a_head_has_the_result_keys_and_counts(holdout, heads, corpus, toy_speech):
    scored, segments = toy_speech
    assert holdout["protocol"] == "holdout"
    assert holdout["labels"] == EMOTIONS
    assert holdout["n_recordings"] == scored
    assert holdout["n_without_speech"] == 1 + 36 - scored
    assert "10a05Wa.wav" in [Path(p).name for p in holdout["without_speech"]]
    assert [Path(f["path"]).name for f in holdout["failures"]] == ["09a05Na.wav"]
    assert np.sum(holdout["confusion"]["matrix"]) == scored
    assert set(holdout["per_speaker"]) == {"emodb:03", "emodb:08", "emodb:09", "emodb:10"}
    assert sum(s["n_recordings"] for s in holdout["per_speaker"].values()) == scored
    for key in ("accuracy", "uar", "ece"):
        assert 0.0 <= holdout[key] <= 1.0
    # 1 s windows: recordings of 1.2-1.8 s give two segments each, most of them speech
    assert holdout["per_segment"]["n"] == segments
    assert "tiny-backbone" in holdout["split"]
    assert len(holdout["predictions"]) == scored


def test_holdout_of_a_head_equals_annotate_run(holdout, run_rows):
    rows = run_rows["known"]
    for prediction in holdout["predictions"]:
        row = rows.loc[prediction["path"]]
        expected = [row[f"emo_{label}"] for label in holdout["labels"]]
        assert np.allclose(prediction["probabilities"], expected, atol=1e-5)
        assert row["emotion"] == prediction["predicted"]


def test_holdout_of_a_language_head_smooths_as_the_run_does(heads, corpus, run_rows, toy_speech):
    from annotate.training.heldout import as_language_corpus

    result = evaluate(heads["language"].folder, [as_language_corpus(corpus)], "holdout", jobs=1)
    assert result["task"] == "language" and result["n_recordings"] == toy_speech[0]
    rows = run_rows["detected"]
    for prediction in result["predictions"]:
        row = rows.loc[prediction["path"]]
        assert np.allclose(prediction["probabilities"], [row["lang_de"], row["lang_en"]],
                           atol=1e-5)


# --- leave one speaker out --------------------------------------------------------------


def test_loso_of_a_head_retrains_per_speaker_with_its_settings(heads, corpus, toy_speech):
    result = evaluate(heads["emotion"].folder, [corpus], "loso", jobs=1)
    assert result["protocol"] == "loso"
    assert [f["speaker"] for f in result["folds"]] == ["emodb:03", "emodb:08", "emodb:09",
                                                       "emodb:10"]
    assert (sum(f["n_recordings"] for f in result["folds"]) == result["n_recordings"]
            == toy_speech[0])
    assert all(f["epochs_run"] == 30 and f["temperature"] == 1.5 for f in result["folds"])
    assert result["hyperparameters"] == SETTINGS
    assert result["pooled_uar"] == result["uar"]
    assert result["mean_fold_uar"] == pytest.approx(np.mean([f["uar"] for f in result["folds"]]))
    assert set(result["per_speaker"]) == {f["speaker"] for f in result["folds"]}
    for key in ("accuracy", "uar", "ece"):
        assert 0.0 <= result[key] <= 1.0
    # the emotions differ by pitch by a factor of 1.7 or more: a retrained head finds that
    assert result["uar"] > 0.6
    assert result["n_without_speech"] == 1 + 36 - toy_speech[0] and len(result["failures"]) == 1


def test_loso_with_training_corpora_trains_on_them_and_scores_only_the_others(heads, corpus,
                                                                             tmp_path, toy_speech):
    other = read_corpus("emodb", make_toy_emodb(tmp_path / "other", speakers=("11", "12"),
                                                emotions="WNF", first_seed=400))
    result = evaluate(heads["emotion"].folder, [corpus], "loso", jobs=1,
                      training_corpora=[other])
    assert [f["speaker"] for f in result["folds"]] == ["emodb:03", "emodb:08", "emodb:09",
                                                       "emodb:10"]
    # each fold trains on 3 scored speakers plus the 2 always-trained ones
    assert all(f["train_speakers"] == 5 for f in result["folds"])
    assert result["n_recordings"] == toy_speech[0]
    assert set(result["per_speaker"]) == {"emodb:03", "emodb:08", "emodb:09", "emodb:10"}
    # happiness is not one of the head's labels: those recordings are dropped
    assert result["training_only_recordings"] == 12
    assert "never scored" in result["split"]
    with pytest.raises(UsageError, match="only for leave-one-speaker-out"):
        evaluate(heads["emotion"].folder, [corpus], "holdout", jobs=1, training_corpora=[other])
    with pytest.raises(UsageError, match="both scored and always trained on"):
        evaluate(heads["emotion"].folder, [corpus], "loso", jobs=1, training_corpora=[corpus])


def test_loso_refuses_a_head_without_settings_and_a_single_speaker(heads, corpus):
    from annotate.training.heldout import as_language_corpus

    with pytest.raises(ModelError, match="training.settings"):
        evaluate(heads["language"].folder, [as_language_corpus(corpus)], "loso", jobs=1)
    single = dataclasses.replace(
        corpus, items=corpus.items[corpus.items["speaker"] == "emodb:03"].reset_index(drop=True))
    with pytest.raises(InputError, match="at least 2 speakers"):
        evaluate(heads["emotion"].folder, [single], "loso", jobs=1)


# --- a language head's cascade -------------------------------------------------------------


@pytest.fixture(scope="module")
def cascade_models(tmp_path_factory, corpus):
    """A backbone with Whisper's language step, and a language head whose cascade asks
    Whisper for about half of the corpus' segments (its threshold: their median top
    probability) and then every recording with Whisper's 30 s context (as Whisper alone
    does), beside an emotion head for the run."""
    from annotate.modelling.model_folder import LanguageCascade
    from annotate.training.evaluate import collect_items
    from annotate.training.evaluate_heads import encode_for_head, head_probabilities
    from annotate.training.heldout import as_language_corpus

    root = tmp_path_factory.mktemp("cascade-models")
    backbone = create_backbone_folder(root / "tiny-whisper", n_layers=3, litert_blocks=2,
                                      language=True)
    # Whisper alone asks its 30 s context for every recording too.
    spec_file = backbone.folder / "backbone.json"
    raw = json.loads(spec_file.read_text())
    raw["language"] |= {"context_threshold": 1.0, "context_weight": 0.8}
    spec_file.write_text(json.dumps(raw))
    create_head_folder(root / "emotion", "emotion", EMOTIONS, backbone, layers=(1, 2), seed=1)
    probe = create_head_folder(root / "probe", "language", ["de", "en"], backbone, layers=(2,),
                               languages=["de", "en"], seed=2)
    language = as_language_corpus(corpus)
    data, _, _ = encode_for_head(probe, collect_items([language], "language"), 1, print)
    top = head_probabilities(probe, data)[0].max(axis=1)
    threshold = float(np.median(top))
    assert (top < threshold).any() and (top >= threshold).any()
    head = create_head_folder(root / "language", "language", ["de", "en"], backbone,
                              layers=(2,), languages=["de", "en"], seed=2,
                              switch_probability=0.1,
                              cascade=LanguageCascade(threshold, 0.6, 0.9, "tests",
                                                      context_threshold=1.0,
                                                      context_weight=0.8))
    head = dataclasses.replace(head, training={"settings": dict(SETTINGS, layers=[2]),
                                               "seed": 3})
    write_model_folder(head, "# language\n\nAn untrained head for tests.\n")
    return {"language": read_model_folder(head.folder), "emotion": root / "emotion",
            "corpus": language}


def cascade_run_rows(models, corpus, out: Path, language_id: str):
    import pandas as pd

    from annotate.pipeline.run import run
    from annotate.views.summarize import per_recording, read_output

    manifest = out / "speech.csv"
    speech = corpus.items[~corpus.items["path"].str.contains("10a05Wa|09a05Na")]
    pd.DataFrame({"path": speech["path"]}).to_csv(manifest, index=False)
    table = out / f"{language_id}.parquet"
    run([manifest], table, language_model=models["language"].folder,
        emotion_models={"*": models["emotion"]}, language_id=language_id,
        window_s=models["language"].features.segment_s, jobs=1)
    return per_recording(read_output(table)).set_index("path")


@pytest.mark.parametrize("language_id", ["auto", "whisper"])
def test_holdout_of_a_language_head_gives_what_the_run_labels(cascade_models, corpus, tmp_path,
                                                               language_id):
    spec = cascade_models["language"]
    result = evaluate(spec.folder, [cascade_models["corpus"]], "holdout", jobs=1,
                      language_id=language_id)
    assert result["language_id"] == ("cascade" if language_id == "auto" else "whisper")
    rows = cascade_run_rows(cascade_models, corpus, tmp_path, language_id)
    heard = rows[rows["lang"].notna()]  # the run lists every recording, speech or not
    assert len(result["predictions"]) == len(heard) >= 24
    for prediction in result["predictions"]:
        row = rows.loc[prediction["path"]]
        assert np.allclose(prediction["probabilities"], [row["lang_de"], row["lang_en"]],
                           atol=1e-5)
    head = evaluate(spec.folder, [cascade_models["corpus"]], "holdout", jobs=1,
                    language_id="head")
    assert head["language_id"] == "head"
    apart = [np.abs(np.subtract(a["probabilities"], b["probabilities"])).max()
             for a, b in zip(result["predictions"], head["predictions"], strict=True)]
    assert max(apart) > 1e-4  # adapted: an untrained head moves little, but it moves


def test_loso_of_a_language_head_takes_whisper_as_the_run_would(cascade_models):
    spec = cascade_models["language"]
    loso = evaluate(spec.folder, [cascade_models["corpus"]], "loso", jobs=1,
                    language_id="whisper")
    holdout = evaluate(spec.folder, [cascade_models["corpus"]], "holdout", jobs=1,
                       language_id="whisper")
    # Whisper's step alone does not depend on the retrained head.
    by_path = {p["path"]: p["probabilities"] for p in holdout["predictions"]}
    for prediction in loso["predictions"]:
        assert np.allclose(prediction["probabilities"], by_path[prediction["path"]], atol=1e-6)
    assert "Whisper's language step alone" in loso["split"]
    cascade = evaluate(spec.folder, [cascade_models["corpus"]], "loso", jobs=1)
    assert cascade["language_id"] == "cascade" and "the cascade" in cascade["split"]


def test_evaluate_refuses_a_language_id_the_model_cannot_give(heads, cascade_models, corpus):
    from annotate.training.heldout import as_language_corpus

    with pytest.raises(UsageError, match="for a language head"):
        evaluate(heads["emotion"].folder, [corpus], "holdout", jobs=1, language_id="cascade")
    # no language.tflite beside this head: auto takes the head, cascade is refused
    language = as_language_corpus(corpus)
    assert evaluate(heads["language"].folder, [language], "holdout",
                    jobs=1)["language_id"] == "head"
    with pytest.raises(UsageError, match="language.tflite"):
        evaluate(heads["language"].folder, [language], "holdout", jobs=1, language_id="cascade")
    with pytest.raises(UsageError, match="language identification"):
        evaluate(cascade_models["language"].folder, [language], "holdout", jobs=1,
                 language_id="guess")


def test_holdout_with_speakers_gives_what_a_run_told_the_speakers_labels(heads, tmp_path):

    from annotate.pipeline.run import run
    from annotate.views.summarize import per_recording, read_output

    corpus = read_corpus("emodb", make_toy_emodb(tmp_path / "emodb", speakers=("03", "08"),
                                                 per_emotion=8, first_seed=600))
    result = evaluate(heads["emotion"].folder, [corpus], "holdout", jobs=1, speakers=True)
    plain = evaluate(heads["emotion"].folder, [corpus], "holdout", jobs=1)
    assert "relative to each speaker" in result["split"]
    manifest = tmp_path / "speakers.csv"
    corpus.items[["path", "speaker"]].to_csv(manifest, index=False)
    run([manifest], tmp_path / "run.parquet", language_model=heads["language"].folder,
        emotion_models={"de": heads["emotion"].folder}, languages=["de"], speakers="manifest",
        window_s=heads["backbone"].features.segment_s, jobs=1)
    rows = per_recording(read_output(tmp_path / "run.parquet")).set_index("path")
    apart = []
    for adapted, before in zip(result["predictions"], plain["predictions"], strict=True):
        row = rows.loc[adapted["path"]]
        assert np.allclose(adapted["probabilities"],
                           [row[f"emo_{label}"] for label in result["labels"]], atol=1e-5)
        apart.append(np.abs(np.subtract(adapted["probabilities"], before["probabilities"])).max())
    assert max(apart) > 1e-4  # adapted: an untrained head moves little, but it moves
    with pytest.raises(UsageError, match="speakers are for holdout"):
        evaluate(heads["emotion"].folder, [corpus], "loso", jobs=1, speakers=True)
