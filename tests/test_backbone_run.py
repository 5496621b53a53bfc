"""annotate run and annotate train with heads on a backbone (a tiny random one here)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import write_audio
from typer.testing import CliRunner

import annotate
from annotate.cli import app
from annotate.errors import UsageError
from annotate.modelling.model_folder import read_model_folder
from annotate.testing import (
    create_backbone_folder,
    create_head_folder,
    make_toy_emodb,
    speech_like,
    tone,
)

runner = CliRunner()
LANGUAGES = ["de", "en", "fr", "it"]


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A tiny backbone with a language head and two emotion heads beside it."""
    root = tmp_path_factory.mktemp("heads")
    backbone = create_backbone_folder(root / "tiny-whisper")
    create_head_folder(root / "language", "language", LANGUAGES, backbone, layers=(2,),
                       languages=LANGUAGES, switch_probability=0.05, seed=1)
    create_head_folder(root / "emotion-de", "emotion", ["anger", "neutral", "sadness"],
                       backbone, layers=(1, 2), languages=["de"], seed=2)
    create_head_folder(root / "emotion-multi", "emotion", ["happiness", "neutral"],
                       backbone, layers=(0, 1), seed=3)
    return root


def head_args(root):
    return {"language_model": root / "language",
            "emotion_models": {"de": root / "emotion-de", "*": root / "emotion-multi"}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_audio(folder / "long.wav", speech_like(10.4, seed=1), 16000)  # 3 + 3 + 3 + 1.4 s
    write_audio(folder / "short.wav", speech_like(1.7, seed=2), 16000)
    write_audio(folder / "mixed.flac", np.concatenate(
        [speech_like(3.0, seed=3), np.zeros(48000, np.float32), tone(3.0)]), 16000)  # speech, silence, a tone
    write_audio(folder / "silent.wav", np.zeros(40000, np.float32), 16000)  # no speech at all
    return folder


def table(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["path", "start_s"]).reset_index(drop=True)


def test_heads_label_every_speech_segment_once_per_backbone_pass(corpus, heads, tmp_path):
    result = annotate.run([corpus], tmp_path / "out.parquet", **head_args(heads), jobs=1)
    assert result.failed == 0 and result.annotated == 4
    rows = table(tmp_path / "out.parquet")
    speech = rows[rows["speech"]]
    assert len(rows) == 4 + 1 + 3 + 1 and not speech.empty
    assert not rows.loc[rows["path"] == "silent.wav", "speech"].any()
    np.testing.assert_allclose(speech[[f"lang_{c}" for c in LANGUAGES]].sum(axis=1), 1.0)
    assert speech["emotion"].notna().all() and rows.loc[~rows["speech"], "lang"].isna().all()
    metadata = json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"annotate"])
    (backbone,) = metadata["backbones"]
    assert backbone["name"] == "tiny-whisper" and backbone["backend"] == "litert"
    assert backbone["layers"] == [0, 1, 2] and backbone["hash"].startswith("sha256:")
    assert {m["backbone"] for m in metadata["models"]} == {"tiny-whisper"}


def test_the_table_does_not_depend_on_batch_size_or_jobs(corpus, heads, tmp_path):
    annotate.run([corpus], tmp_path / "a.parquet", **head_args(heads), jobs=1, batch_size=1)
    annotate.run([corpus], tmp_path / "b.parquet", **head_args(heads), jobs=2, batch_size=512)
    pd.testing.assert_frame_equal(table(tmp_path / "a.parquet"), table(tmp_path / "b.parquet"))


def test_keras_and_litert_backbones_agree(corpus, heads, tmp_path):
    annotate.run([corpus], tmp_path / "k.parquet", **head_args(heads), jobs=1, backend="keras")
    annotate.run([corpus], tmp_path / "l.parquet", **head_args(heads), jobs=1, backend="litert")
    keras, lite = table(tmp_path / "k.parquet"), table(tmp_path / "l.parquet")
    columns = [c for c in keras if c.startswith(("lang_", "emo_"))]
    np.testing.assert_allclose(keras[columns].to_numpy(float), lite[columns].to_numpy(float),
                               atol=1e-4)


def test_a_changed_backbone_changes_the_fingerprint(corpus, heads, tmp_path):
    out = tmp_path / "out.parquet"
    copy = tmp_path / "models"
    import shutil

    shutil.copytree(heads, copy)
    annotate.run([corpus], out, **head_args(copy), jobs=1)
    annotate.run([corpus], out, **head_args(copy), jobs=1)  # same models: nothing to redo
    create_backbone_folder(copy / "tiny-whisper", seed=9)  # other weights, same name
    with pytest.raises(UsageError, match="made with other settings"):
        annotate.run([corpus], out, **head_args(copy), jobs=1)


def test_a_missing_backbone_is_a_model_error(heads, tmp_path, corpus):
    import shutil

    alone = tmp_path / "alone"
    shutil.copytree(heads / "language", alone / "language")
    result = runner.invoke(app, ["run", str(corpus), "-o", str(tmp_path / "o.parquet"),
                                 "--language-model", str(alone / "language")])
    assert result.exit_code == 3
    assert "tiny-whisper" in result.output


def test_train_head_searches_and_writes_a_folder_the_run_uses(heads, tmp_path):
    emodb = make_toy_emodb(tmp_path / "emodb", speakers=("03", "08", "09", "10"),
                           emotions="WNT", per_emotion=6)
    folder = tmp_path / "my-head"
    result = runner.invoke(app, [
        "train", "emotion", "--corpus", f"emodb={emodb}", "-o", str(folder),
        "--backbone", str(heads / "tiny-whisper"), "--search", "2", "--folds", "2",
        "--cache-dir", str(tmp_path / "cache"), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    spec = read_model_folder(folder)
    assert spec.backbone is not None and spec.backbone.name == "tiny-whisper"
    assert spec.labels == ("neutral", "sadness", "anger") and spec.languages == ("de",)
    assert spec.litert is not None and spec.temperature > 0
    assert len(spec.training["search"]["history"]) == 2
    validation = spec.metrics["validation"]
    assert 0.0 <= validation["uar"] <= 1.0 and "speaker-disjoint" in validation["split"]
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 4 * 3 * 6
    # each speaker has 35 s of speech: enough for a temperature of its own with --speakers
    fitted = spec.speaker_adaptation
    assert fitted is not None and fitted.temperature > 0
    assert fitted.validation["corpora"]["emodb"]["speakers"] == 4
    # The head runs beside its backbone (found as a sibling folder).
    (tmp_path / "tiny-whisper").symlink_to(heads / "tiny-whisper")
    out = tmp_path / "out.parquet"
    annotate.run([emodb], out, language_model=heads / "language", languages=["de"],
                 emotion_models={"de": folder}, jobs=1)
    rows = pd.read_parquet(out)
    assert set(rows.loc[rows["speech"], "emotion_model"]) == {"my-head"}


def test_features_spilled_to_disk_give_the_same_table(corpus, heads, tmp_path, monkeypatch):
    annotate.run([corpus], tmp_path / "memory.parquet", **head_args(heads), jobs=1)
    monkeypatch.setattr("annotate.pipeline.local.SPILL_BUDGET_BYTES", 1)  # every chunk waits on disk
    annotate.run([corpus], tmp_path / "disk.parquet", **head_args(heads), jobs=1)
    pd.testing.assert_frame_equal(table(tmp_path / "memory.parquet"),
                                  table(tmp_path / "disk.parquet"))


def tiny_speech_head(bias: float, unsure_p: float = 1e-6):
    """A second stage on the tiny backbone's state 2 that says yes (or no) to every segment."""
    from annotate.modelling.speech_head import SpeechHead

    return SpeechHead(backbone="tiny-whisper", width=64, layer=2, weights=np.zeros(64),
                      bias=bias, threshold=0.5, unsure_p=unsure_p, sha256=f"test{bias}")


@pytest.mark.parametrize("bias", [50.0, -50.0])
def test_the_second_stage_decides_the_segments_silero_is_unsure_of(corpus, heads, tmp_path,
                                                                   monkeypatch, bias):
    """A floor of almost zero makes every non-speech segment unsure: the head decides them."""
    annotate.run([corpus], tmp_path / "alone.parquet", **head_args(heads), jobs=1,
                 speech_detector="silero-only")
    alone = table(tmp_path / "alone.parquet")
    monkeypatch.setattr("annotate.pipeline.plan.bundled_speech_head",
                        lambda: tiny_speech_head(bias))
    out = tmp_path / "two.parquet"
    annotate.run([corpus], out, **head_args(heads), jobs=1)
    rows = table(out)
    metadata = json.loads(pq.read_schema(out).metadata[b"annotate"])
    assert metadata["speech_detector"]["second_stage"]["sha256"] == f"test{bias}"
    assert metadata["settings"]["unsure_p"] == 1e-6
    checked = ~alone["speech"] & (alone["speech_p"] >= 1e-6)
    assert checked.sum() >= 3  # the silence, the tone, the silent file
    pd.testing.assert_series_equal(rows["speech"], alone["speech"] | (checked & (bias > 0)),
                                   check_names=False)
    np.testing.assert_allclose(rows.loc[checked, "speech_p"], 1.0 if bias > 0 else 0.0,
                               atol=1e-12)
    assert (rows.loc[rows["speech"], "lang"].notna().all()
            and rows.loc[~rows["speech"], "lang"].isna().all())
    if bias < 0:  # nothing found: the labels of Silero alone, the checked segments unlabelled
        same = [c for c in rows.columns if c != "speech_p"]
        pd.testing.assert_frame_equal(rows[same], alone[same])
    else:  # found: their speech is the seconds of frames at the floor or above
        assert (rows.loc[checked, "speech_s"] > 0).all()
        assert rows.loc[checked, "emotion"].notna().all()


def test_the_second_stage_keeps_the_table_independent_of_batch_size_and_jobs(
        corpus, heads, tmp_path, monkeypatch):
    monkeypatch.setattr("annotate.pipeline.plan.bundled_speech_head",
                        lambda: tiny_speech_head(50.0))
    annotate.run([corpus], tmp_path / "a.parquet", **head_args(heads), jobs=1, batch_size=1)
    annotate.run([corpus], tmp_path / "b.parquet", **head_args(heads), jobs=2, batch_size=512)
    pd.testing.assert_frame_equal(table(tmp_path / "a.parquet"), table(tmp_path / "b.parquet"))


def test_a_second_stage_on_another_backbone_is_left_off(corpus, heads, tmp_path, monkeypatch):
    import dataclasses

    other = dataclasses.replace(tiny_speech_head(50.0), backbone="whisper-base")
    monkeypatch.setattr("annotate.pipeline.plan.bundled_speech_head", lambda: other)
    out = tmp_path / "out.parquet"
    annotate.run([corpus], out, **head_args(heads), jobs=1)
    metadata = json.loads(pq.read_schema(out).metadata[b"annotate"])
    assert metadata["speech_detector"]["second_stage"] is None
    assert metadata["settings"]["unsure_p"] is None
