"""The app: its logic as functions, and the Streamlit script through ``AppTest``."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import typer
from conftest import LANGUAGES, write_audio
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

import annotate
from annotate.cli.views import APP_SCRIPT, app_config, app_environment, streamlit_command
from annotate.errors import InputError, ModelError, UsageError
from annotate.testing import speech_like
from annotate.views import app_logic as logic


def wav_bytes(samples: np.ndarray, sampling_rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sampling_rate, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_annotator(model_args):
    config = logic.AppConfig(str(model_args["language_model"]),
                             tuple((k, str(v)) for k, v in model_args["emotion_models"].items()))
    return logic.ClipAnnotator(config.load_models())


@pytest.fixture
def model_env(monkeypatch, models):
    """Point the app at the tiny models, as ``annotate app --language-model ...`` would."""
    monkeypatch.setenv(logic.ENV_LANGUAGE_MODEL, str(models["language"]))
    monkeypatch.setenv(logic.ENV_EMOTION_MODELS, os.pathsep.join(
        [f"de={models['emotion-de']}", f"*={models['emotion-multi']}"]))
    for name in (logic.ENV_RESULTS, logic.ENV_CORPUS_ROOT):
        monkeypatch.delenv(name, raising=False)


# --- logic ---------------------------------------------------------------


def test_a_clip_gets_exactly_the_rows_of_annotate_run(clip_annotator, model_args, tmp_path):
    source = write_audio(tmp_path / "corpus" / "clip.flac", speech_like(7.0, 22050, seed=4), 22050)
    annotate.run([tmp_path / "corpus"], tmp_path / "out.parquet", jobs=1, **model_args)
    expected = pd.read_parquet(tmp_path / "out.parquet")
    rows = clip_annotator.annotate_file(source, "clip.flac")
    pd.testing.assert_frame_equal(rows, expected)


def test_an_upload_is_annotated_with_its_spectrogram(clip_annotator):
    result = clip_annotator.annotate_upload("hello.wav", wav_bytes(speech_like(5.0, seed=1)))
    assert result.rows["path"].tolist() == ["hello.wav", "hello.wav"]
    assert result.rows["speech"].all() and set(result.rows["lang"]) <= set(LANGUAGES)
    assert result.duration_s == pytest.approx(5.0)
    assert result.log_mel.shape == (1 + 5 * 100, result.features.n_mels)
    summary = logic.clip_summary(result.rows)
    assert summary["language"].index[0] in LANGUAGES
    assert 0 < summary["language"].iloc[0] <= 1 and len(summary["emotion"]) == 3
    assert summary["language"].is_monotonic_decreasing


@pytest.mark.parametrize("name, data, message", [
    ("notes.txt", b"hello", r"notes.txt is not an audio file \(type \.txt\); upload .*\.wav"),
    ("noextension", b"hello", r"not an audio file \(type none\)"),
    ("voice.m4a", b"....", r"\.m4a files cannot be decoded here; convert it to WAV"),
    ("fake.wav", b"RIFF but nothing else", r"fake.wav is not audio that can be decoded"),
    ("empty.wav", b"", r"empty.wav is empty"),
])
def test_uploads_that_are_not_audio_are_refused_clearly(clip_annotator, name, data, message):
    with pytest.raises(InputError, match=message):
        clip_annotator.annotate_upload(name, data)


def test_uploads_over_the_size_cap_are_refused_before_reading(monkeypatch):
    with pytest.raises(InputError, match=r"big.wav is 51 MB; the app takes files up to 50 MB"):
        logic.check_upload("big.wav", 51 * 1024 * 1024)
    assert logic.check_upload("ok.FLAC", 1000) == "flac"


def test_config_comes_from_argv_then_environment(tmp_path):
    env = {logic.ENV_LANGUAGE_MODEL: "/env/lang",
           logic.ENV_EMOTION_MODELS: os.pathsep.join(["de=/env/de", "*=/env/all"]),
           logic.ENV_RESULTS: "/env/out.parquet"}
    from_env = logic.AppConfig.from_sources([], env)
    assert from_env.language_model == "/env/lang"
    assert dict(from_env.emotion_models) == {"de": "/env/de", "*": "/env/all"}
    config = logic.AppConfig("lang", (("fr", "fr-model"),), "out.parquet", str(tmp_path))
    back = logic.AppConfig.from_sources(config.to_argv(), env)
    assert back.language_model == str((tmp_path.cwd() / "lang").resolve())
    assert dict(back.emotion_models) == {"fr": str((tmp_path.cwd() / "fr-model").resolve())}
    assert back.corpus_root == str(tmp_path)
    with pytest.raises(UsageError, match="expected LANG=DIR"):
        logic.AppConfig.from_sources(["--emotion-model", "de"], {})


def test_the_command_runs_this_app_script_with_the_options(models, tmp_path):
    config = app_config(None, tmp_path, models["language"], [f"de={models['emotion-de']}"])
    command = streamlit_command(config, 8765)
    assert command[1:5] == ["-m", "streamlit", "run", str(APP_SCRIPT)]
    assert command[command.index("--server.port") + 1] == "8765"
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert logic.AppConfig.from_sources(command[command.index("--") + 1:], {}) == \
        logic.AppConfig(str(models["language"].resolve()),
                        (("de", str(models["emotion-de"].resolve())),), None, str(tmp_path))
    with pytest.raises(ModelError):
        app_config(None, None, models["emotion-de"], [])  # an emotion model as language model
    with pytest.raises(UsageError, match="no such table"):
        app_config(tmp_path / "missing.parquet", None, None, [])
    with pytest.raises(UsageError, match="bad port"):
        streamlit_command(config, 70000)


def test_the_app_command_refuses_bad_options_before_starting_anything(models, tmp_path):
    from annotate.cli.views import app, report

    cli = typer.Typer()
    cli.command()(report)
    cli.command()(app)
    runner = CliRunner()
    for args, code, message in [
        (["--results", str(tmp_path / "missing.parquet")], 2, "no such table"),
        (["--port", "0"], 2, "bad port 0"),
        (["--emotion-model", "de"], 2, "expected LANG=DIR"),
        (["--corpus-root", str(tmp_path / "nowhere")], 2, "is not a directory"),
        (["--language-model", str(models["emotion-de"])], 3, "not a language model"),
    ]:
        result = runner.invoke(cli, ["app", *args])
        assert result.exit_code == code, result.output
        assert message in result.output


def test_the_commands_module_stays_light():
    code = ("import sys, annotate.cli.views; "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'matplotlib', 'streamlit', 'tensorflow'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=app_environment(), check=True)
    assert done.stdout.strip() == "[]"


def test_filters_select_segments_and_audio_is_found_under_the_root(tmp_path):
    frame = pd.DataFrame({
        "path": ["a/x.wav", "a/x.wav", "b/y.wav", "b/y.wav"],
        "start_s": [0.0, 3.0, 0.0, 3.0], "end_s": [3.0, 6.0, 3.0, 4.0],
        "speech": [True, True, True, False],
        "lang": ["de", "en", "de", None], "lang_p": [0.9, 0.4, 0.6, None],
        "emotion": ["anger", "neutral", "neutral", None], "emotion_p": [0.5, 0.8, 0.3, None],
    })
    assert len(logic.filter_segments(frame)) == 3
    assert len(logic.filter_segments(frame, speech_only=False)) == 4
    assert logic.filter_segments(frame, languages=["de"])["path"].tolist() == ["a/x.wav", "b/y.wav"]
    assert logic.filter_segments(frame, emotions=["neutral"], min_language_p=0.5)["path"].tolist() \
        == ["b/y.wav"]
    confident = logic.filter_segments(frame, min_emotion_p=0.45, path_contains="A/")
    assert confident["start_s"].tolist() == [0.0, 3.0]
    write_audio(tmp_path / "a" / "x.wav", speech_like(6.0, 8000, seed=1), 8000)
    assert logic.resolve_audio(tmp_path, "a/x.wav") == tmp_path / "a" / "x.wav"
    assert logic.resolve_audio(tmp_path, "b/y.wav") is None
    samples, rate = logic.segment_audio(tmp_path / "a" / "x.wav", 3.0, 6.0)
    assert rate == 8000 and samples.shape == (3 * 8000,)


# --- the Streamlit script --------------------------------------------------


def run_app(timeout: float = 90) -> AppTest:
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=timeout)
    at.run()
    assert not at.exception, at.exception
    return at


def test_app_shows_the_title_and_the_models(model_env):
    at = run_app()
    assert at.title[0].value == logic.TITLE
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "`language`" in sidebar and "`emotion-de`" in sidebar
    assert at.info[0].value.startswith("Record or upload a clip")


def test_uploading_a_clip_shows_its_prediction(model_env):
    at = run_app()
    at.file_uploader(key="uploaded").upload("speech.wav", wav_bytes(speech_like(6.5, seed=2)),
                                            "audio/wav")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    language, emotion = at.metric
    assert language.label == "Language" and language.value in LANGUAGES
    assert emotion.label == "Emotion" and emotion.value
    segments = at.dataframe[0].value
    assert segments["path"].tolist() == ["speech.wav"] * 3
    assert segments[["start_s", "end_s"]].to_numpy().tolist() == [[0, 3], [3, 6], [6, 6.5]]
    assert len(at.get("image")) == 1  # timeline over the spectrogram


def test_a_microphone_recording_is_annotated_too(model_env):
    at = run_app()
    at.audio_input(key="recorded").upload("recording.wav", wav_bytes(speech_like(3.0, seed=3)))
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert at.dataframe[0].value["path"].tolist() == ["recording.wav"]


def test_a_file_that_is_not_audio_gives_a_clear_error(model_env):
    at = run_app()
    at.file_uploader(key="uploaded").upload("minutes.pdf", b"%PDF-1.7 minutes of the meeting",
                                            "application/pdf")
    at.run()
    assert [e.value for e in at.error] == [
        "minutes.pdf is not an audio file (type .pdf); upload a recording such as "
        ".wav, .flac, .mp3, .ogg, .opus, .aiff"]
    assert not at.metric
    at.file_uploader(key="uploaded").clear().upload("bad.wav", b"RIFF....WAVEjunk", "audio/wav")
    at.run()
    assert "bad.wav is not audio that can be decoded" in at.error[0].value


def test_browsing_results_filters_and_plays_a_segment(model_env, model_args, tmp_path,
                                                      monkeypatch):
    corpus = tmp_path / "corpus"
    write_audio(corpus / "one.wav", speech_like(7.0, 16000, seed=5), 16000)
    write_audio(corpus / "sub/two.wav", speech_like(4.0, 16000, seed=6), 16000)
    write_audio(corpus / "quiet.wav", np.zeros(16000 * 2, np.float32), 16000)
    out = tmp_path / "out.parquet"
    annotate.run([corpus], out, jobs=1, **model_args)
    frame = pd.read_parquet(out)
    monkeypatch.setenv(logic.ENV_RESULTS, str(out))
    monkeypatch.setenv(logic.ENV_CORPUS_ROOT, str(corpus))
    at = run_app()
    table = at.dataframe[0].value
    assert len(table) == int(frame["speech"].sum())  # speech segments by default
    at.text_input(key="f_path").input("sub/")
    at.run()
    assert set(at.dataframe[0].value["path"]) == {"sub/two.wav"}
    assert at.selectbox(key="recording").value == "sub/two.wav"
    assert at.selectbox(key="segment").options[0].startswith("0.0–3.0 s · ")
    assert at.get("audio"), "the segment's audio is offered for playback"
    assert not at.info or all("not at" not in i.value for i in at.info)
    at.text_input(key="corpus_root").input(str(tmp_path / "elsewhere"))
    at.run()
    assert any("The audio is not at" in i.value for i in at.info)
