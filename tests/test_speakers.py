"""Emotions relative to each speaker (``annotate run --speakers``)."""

# Test names say what each test checks.
# ruff: noqa: D103

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_metadata, sorted_table, write_audio

import annotate
from annotate.audio.discover import Recording, read_manifest
from annotate.errors import ModelError, UsageError
from annotate.modelling.model_folder import read_model_folder
from annotate.modelling.posteriors import adapt_to_speakers, softmax
from annotate.pipeline.speakers import adapt_table, speakers_of
from annotate.pipeline.store import read_metadata
from annotate.testing import voice


def two_voices(n: int = 12, k: int = 4, seed: int = 0):
    """The same emotions said by two speakers whose voices shift the head's logits."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, k)) * 2
    voice_a, voice_b = rng.standard_normal(k) * 3, rng.standard_normal(k) * 3
    probs = np.concatenate([softmax(signal + voice_a), softmax(signal + voice_b)])
    speakers = np.array(["a"] * n + ["b"] * n, dtype=object)
    return probs, speakers, np.full(2 * n, 3.0)


def test_centring_removes_what_a_speakers_voice_adds():
    probs, speakers, durations = two_voices()
    out, adapted = adapt_to_speakers(probs, speakers, durations, prior_s=0.0)
    assert adapted.all()
    np.testing.assert_allclose(out[:12], out[12:], atol=1e-9)
    assert np.abs(probs[:12] - probs[12:]).max() > 0.1
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    # the shrinkage towards the run's mean keeps some of the voice, and the temperature sharpens
    shrunk, _ = adapt_to_speakers(probs, speakers, durations)
    assert 0 < np.abs(shrunk[:12] - shrunk[12:]).max() < np.abs(probs[:12] - probs[12:]).max()
    sharp, _ = adapt_to_speakers(probs, speakers, durations, temperature=0.5, prior_s=0.0)
    np.testing.assert_allclose(sharp, softmax(np.log(out), 0.5), atol=1e-9)


def test_unknown_speakers_short_speakers_and_lone_speakers_keep_their_probabilities():
    probs, speakers, durations = two_voices(n=16)  # 48 s of speech each
    speakers = speakers.copy()
    speakers[:3] = None  # unknown
    speakers[3:6] = "c"  # 9 s of speech: too little
    out, adapted = adapt_to_speakers(probs, speakers, durations)
    assert not adapted[:6].any() and adapted[6:].all()
    np.testing.assert_array_equal(out[:6], probs[:6])
    # one speaker with enough speech: nothing to compare the voice with
    alone = np.where(speakers == "b", "b", None).astype(object)
    out, adapted = adapt_to_speakers(probs, alone, durations)
    assert not adapted.any() and np.array_equal(out, probs)


def test_a_speaker_is_the_folder_or_the_manifests_column(tmp_path):
    recordings = [Recording("Actor_01/a.wav", "x"), Recording("Actor_01/b.wav", "x"),
                  Recording("top.wav", "x"), Recording("s/Actor_02/c.wav", "x", "ignored")]
    assert speakers_of(recordings, "folder") == {"Actor_01/a.wav": "Actor_01",
                                                 "Actor_01/b.wav": "Actor_01",
                                                 "top.wav": None,
                                                 "s/Actor_02/c.wav": "s/Actor_02"}
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.wav", "b.wav", "c.wav"], "speaker": ["ann", "", "bo"]}).to_csv(
        manifest, index=False)
    found, _ = read_manifest(manifest)
    assert [r.speaker for r in found] == ["ann", None, "bo"]
    assert speakers_of(found, "manifest") == {"a.wav": "ann", "b.wav": None, "c.wav": "bo"}
    # Common Voice names its speakers client_id
    (tmp_path / "clips").mkdir()
    (tmp_path / "train.tsv").write_text("client_id\tpath\tsentence\nf00d\tx.mp3\tHallo\n")
    assert [r.speaker for r in read_manifest(tmp_path / "train.tsv")[0]] == ["f00d"]
    with pytest.raises(UsageError, match="no recording is in a folder"):
        speakers_of([Recording("top.wav", "x")], "folder")
    with pytest.raises(UsageError, match="'speaker' column"):
        speakers_of([Recording("top.wav", "x")], "manifest")
    with pytest.raises(UsageError, match="speaker source"):
        speakers_of(recordings, "voice")


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Two speakers' folders, each with 8 recordings of 3 s, in voices an octave apart."""
    root = tmp_path_factory.mktemp("voices")
    for speaker, pitch in (("anna", 220.0), ("bert", 110.0)):
        for i in range(8):
            write_audio(root / speaker / f"{i}.wav", voice(3.0, pitch * (1 + 0.05 * i), seed=i),
                        16000)
    return root


def test_a_run_with_speakers_adapts_the_emotions_of_the_plain_run(voices, model_args, tmp_path):
    plain = tmp_path / "plain.parquet"
    adapted = tmp_path / "adapted.parquet"
    annotate.run([voices], plain, languages=["de"], jobs=1, **model_args)
    annotate.run([voices], adapted, languages=["de"], jobs=1, speakers="folder", **model_args)
    import pyarrow.parquet as pq

    speaker_of = {p: p.split("/")[0] for p in pq.read_table(plain).column("path").to_pylist()}
    expected, summary = adapt_table(pq.read_table(plain), speaker_of, {})
    got = sorted_table(adapted)
    want = expected.to_pandas().sort_values(["path", "start_s"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    before = sorted_table(plain)
    emotions = [c for c in got.columns if c.startswith("emo_")]
    # the untrained test heads hear little of either voice, but what they hear is taken away
    assert (got[emotions] - before[emotions]).abs().max().max() > 1e-5
    languages = [c for c in got.columns if c.startswith("lang")]
    pd.testing.assert_frame_equal(got[languages], before[languages])
    meta = run_metadata(adapted)
    assert meta["settings"]["speakers"] == "folder"
    assert meta["speaker_adaptation"]["source"] == "folder"
    assert meta["speaker_adaptation"]["models"]["emotion-de"]["speakers_adapted"] == 2
    assert meta["fingerprint"] != run_metadata(plain)["fingerprint"]
    with pytest.raises(UsageError, match="speaker source"):
        annotate.run([voices], tmp_path / "x.parquet", speakers="voices", **model_args)


def test_a_model_folder_keeps_its_speaker_temperature_and_refuses_a_bad_one(models, tmp_path):
    import shutil

    folder = tmp_path / "emotion"
    shutil.copytree(models["emotion-de"], folder)
    spec_file = folder / "model.json"
    raw = json.loads(spec_file.read_text())
    raw["speaker_adaptation"] = {"temperature": 0.8, "fitted_on": "tests"}
    spec_file.write_text(json.dumps(raw))
    assert read_model_folder(folder).speaker_adaptation.temperature == 0.8
    raw["speaker_adaptation"] = {"temperature": -1}
    spec_file.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="speaker_adaptation"):
        read_model_folder(folder)


def test_the_bundled_emotion_heads_record_a_speaker_temperature_that_helps_on_validation():
    from annotate.resources import resource_dir

    for name in ("emotion-de", "emotion-en", "emotion-it"):
        fitted = read_model_folder(resource_dir("models") / name).speaker_adaptation
        assert fitted is not None and 0 < fitted.temperature < 2
        for figures in fitted.validation["corpora"].values():
            assert figures["uar_adapted"] > figures["uar_plain"]


def test_the_summary_of_an_adapted_output_names_its_speakers(voices, model_args, tmp_path):
    from rich.console import Console

    from annotate.views.report_text import print_report
    from annotate.views.summarize import summarize

    out = tmp_path / "out.parquet"
    annotate.run([voices], out, languages=["de"], jobs=1, speakers="folder", **model_args)
    assert read_metadata(out)["speaker_adaptation"]["speakers"] == 2
    console = Console(record=True, width=200)
    print_report(console, summarize(out))
    assert ("emotions relative to each speaker (folder): 2 speakers, emotion-de 2 adapted"
            in console.export_text())
    from annotate.views.report import write_report

    page = write_report(out, tmp_path / "report.html").read_text()
    assert "relative to each speaker's own voice" in page and "emotion-de 2 of 2 speakers" in page


def test_the_fitted_temperature_is_the_one_that_best_explains_the_adapted_labels():
    from annotate.training.calibration import SPEAKER_TEMPERATURES, fit_speaker_adaptation

    rng = np.random.default_rng(3)
    n, k = 40, 4
    truth = rng.integers(0, k, 2 * n)
    signal = np.eye(k)[truth] * 1.5 + rng.standard_normal((2 * n, k)) * 0.5
    voices = np.repeat(rng.standard_normal((2, k)) * 2, n, axis=0)
    probs = softmax(signal + voices)
    speakers = np.array(["a"] * n + ["b"] * n, dtype=object)
    owner = np.arange(2 * n)
    fitted = fit_speaker_adaptation(probs, owner, np.full(2 * n, 3.0), truth, speakers,
                                    np.array(["c"] * 2 * n), np.ones(2 * n, bool), k, "tests",
                                    report=lambda text: None)
    table = fitted.validation["corpora"]["c"]
    assert table["uar_adapted"] > table["uar_plain"]
    nll = {float(t): v for t, v in fitted.validation["temperatures"].items()}
    assert set(nll) == set(SPEAKER_TEMPERATURES)
    assert nll[fitted.temperature] == min(nll.values())
    # one speaker: nothing to fit
    assert fit_speaker_adaptation(probs[:n], owner[:n], np.full(n, 3.0), truth[:n],
                                  speakers[:n], np.array(["c"] * n), np.ones(n, bool), k,
                                  "tests", report=lambda text: None) is None


def test_the_command_line_takes_the_speakers_and_refuses_what_it_cannot_use(voices, tmp_path,
                                                                             model_cli_args):
    from typer.testing import CliRunner

    from annotate.cli import app

    runner = CliRunner()
    out = tmp_path / "out.parquet"
    ok = runner.invoke(app, ["run", str(voices), "-o", str(out), "-j", "1", "-q",
                             "--languages", "de", "--speakers", "folder", *model_cli_args])
    assert ok.exit_code == 0, ok.output
    assert read_metadata(out)["speaker_adaptation"]["source"] == "folder"
    bad = runner.invoke(app, ["run", str(voices), "-o", str(tmp_path / "b.parquet"),
                              "--speakers", "voice", *model_cli_args])
    assert bad.exit_code == 2 and "speaker source" in bad.output
    # a folder of recordings names no speaker in a manifest
    none = runner.invoke(app, ["run", str(voices), "-o", str(tmp_path / "n.parquet"), "-j", "1",
                               "--speakers", "manifest", *model_cli_args])
    assert none.exit_code == 2 and "'speaker' column" in none.output
