"""``annotate report``: one self-contained HTML file, fast on large tables."""

from __future__ import annotations

import base64
import json
import re
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from conftest import LANGUAGES, write_audio
from typer.testing import CliRunner

import annotate
from annotate.errors import UsageError
from annotate.labels import EMOTIONS
from annotate.pipeline.store import METADATA_KEY, failures_path
from annotate.schema import segments_schema
from annotate.testing import speech_like
from annotate.views.report import aggregate, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EMODB = ("anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness")
FALLBACK = ("anger", "happiness", "neutral", "sadness")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, model_args):
    """A real run of the tiny models over a corpus with two broken inputs."""
    root = tmp_path_factory.mktemp("report")
    corpus = root / "corpus"
    write_audio(corpus / "long.wav", speech_like(20.0, 16000, seed=1), 16000)
    write_audio(corpus / "talks/medium.flac", speech_like(9.0, 16000, seed=2), 16000)
    write_audio(corpus / "talks/short.wav", speech_like(4.0, 16000, seed=3), 16000)
    write_audio(corpus / "silence.wav", np.zeros(16000 * 2, np.float32), 16000)
    (corpus / "broken.wav").write_bytes(b"RIFF<script>not audio</script>")
    (corpus / "empty.flac").write_bytes(b"")
    out = root / "out.parquet"
    annotate.run([corpus], out, jobs=1, **model_args)
    return out


def images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


def test_report_is_one_self_contained_file(annotated, tmp_path):
    out = write_report(annotated, tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    pngs = images(text)
    # language share, emotion per language, confidence, and three timelines
    assert len(pngs) == 6
    assert all(png.startswith(PNG_MAGIC) for png in pngs)
    assert "http://" not in text and "https://" not in text
    # nothing is fetched: no scripts, style sheets, frames or fonts from anywhere
    assert not re.search(r"<(script|link|iframe)\b|@import|url\(", text, re.IGNORECASE)
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', text))


def test_report_lists_failures_with_their_messages_escaped(annotated, tmp_path):
    text = write_report(annotated, tmp_path / "report.html").read_text()
    section = text.split("<h2>Failures</h2>", 1)[1].split("<h2>", 1)[0]
    failures = pq.read_table(failures_path(annotated)).to_pandas()
    assert set(failures["path"]) == {"broken.wav", "empty.flac"}
    for row in failures.itertuples():
        assert f"<td class=\"mono\">{row.path}</td>" in section
        assert row.error in section
    assert "empty file (0 bytes)" in section
    assert "<script>" not in text  # the file name's bytes in a message must not become markup


def test_report_shows_the_runs_settings_and_models(annotated, tmp_path):
    text = write_report(annotated, tmp_path / "report.html").read_text()
    meta = json.loads(pq.read_schema(annotated).metadata[METADATA_KEY])
    run = text.split("<h2>Run</h2>", 1)[1]
    for model in meta["models"]:
        assert f"<td>{model['name']}</td>" in run
        assert model["hash"][:19] in run
    assert "<td>window_s</td>" in run and meta["fingerprint"] in run


def test_longest_recordings_get_timelines_unless_named(annotated, tmp_path):
    data = aggregate(annotated)
    assert list(data.timelines) == ["long.wav", "talks/medium.flac", "talks/short.wav"]
    named = aggregate(annotated, recordings=["silence.wav"])
    assert list(named.timelines) == ["silence.wav"]
    assert set(named.timelines["silence.wav"]["path"]) == {"silence.wav"}
    text = write_report(annotated, tmp_path / "r.html", recordings=["talks/short.wav"]).read_text()
    assert '<h3 class="path">talks/short.wav</h3>' in text
    assert '<h3 class="path">long.wav</h3>' not in text
    assert len(images(text)) == 4


def test_an_unknown_recording_is_a_usage_error_with_suggestions(annotated):
    with pytest.raises(UsageError, match=r"bad recording 'talks/shrt.wav'.*talks/short.wav"):
        aggregate(annotated, recordings=["talks/shrt.wav"])


def test_the_numbers_agree_with_the_table(annotated):
    data = aggregate(annotated)
    frame = pd.read_parquet(annotated)
    speech = frame[frame["speech"]]
    assert data.segments == len(frame) and data.speech_segments == len(speech)
    assert data.recordings.loc["long.wav", "duration_s"] == pytest.approx(20.0)
    assert pd.isna(data.recordings.loc["silence.wav", "lang"])  # no speech, no language
    # speech time is what the detector heard inside the speech segments
    assert data.language_time_s.sum() == pytest.approx(speech["speech_s"].sum())
    assert data.recordings["speech_s"].sum() == pytest.approx(frame["speech_s"].sum())
    assert int(data.emotion_counts.to_numpy().sum()) == len(speech)
    assert int(data.histograms["language"].sum()) == len(speech)


def test_a_missing_table_or_output_folder_is_a_usage_error(annotated, tmp_path):
    with pytest.raises(UsageError, match="no such table"):
        write_report(tmp_path / "nope.parquet", tmp_path / "r.html")
    with pytest.raises(UsageError, match="does not exist"):
        write_report(annotated, tmp_path / "no/such/folder/r.html")
    not_ours = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), not_ours)
    with pytest.raises(UsageError, match="not an annotate table"):
        write_report(not_ours, tmp_path / "r.html")


def cli() -> typer.Typer:
    from annotate.cli.views import report

    app = typer.Typer()
    app.command()(report)
    app.command("other")(lambda: None)  # two commands, so typer keeps the command name
    return app


def test_cli_writes_the_report_and_exits_2_on_usage_errors(annotated, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.html"
    result = runner.invoke(cli(), ["report", str(annotated), "-o", str(out),
                                   "--recording", "talks/medium.flac"])
    assert result.exit_code == 0, result.output
    assert '<h3 class="path">talks/medium.flac</h3>' in out.read_text()
    result = runner.invoke(cli(), ["report", str(annotated), "-o", str(out),
                                   "--recording", "missing.wav"])
    assert result.exit_code == 2
    assert "bad recording 'missing.wav'" in result.output


def synthetic_table(path, n_segments: int, seed: int = 0, window_s: float = 3.0) -> None:
    """A table shaped like a real run's (schema, metadata, routing), without running models.

    Recordings of a few minutes to hours; each has a language, segments mostly
    agree with it; emotions come in runs; some segments are silent.
    """
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.lognormal(4.0, 1.0, size=max(n_segments // 40, 1)).astype(int))
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_segments) + 1]
    lengths[-1] -= lengths.sum() - n_segments
    lengths = lengths[lengths > 0]
    n_rec = len(lengths)
    rec = np.repeat(np.arange(n_rec), lengths)
    index = np.arange(n_segments) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rec_lang = rng.choice(len(LANGUAGES), size=n_rec, p=[0.45, 0.3, 0.15, 0.1])
    lang = np.where(rng.random(n_segments) < 0.85, rec_lang[rec],
                    rng.integers(0, len(LANGUAGES), n_segments))
    speech = rng.random(n_segments) > 0.08
    top = rng.beta(6, 2, n_segments) * 0.75 + 0.25
    lang_probs = np.tile(((1 - top) / (len(LANGUAGES) - 1))[:, None], (1, len(LANGUAGES)))
    lang_probs[np.arange(n_segments), lang] = top
    is_de = np.array(LANGUAGES)[rec_lang[rec]] == "de"
    block = rng.integers(0, 7, size=n_segments // 6 + 2)[index // 6 % (n_segments // 6 + 2)]
    emotion = np.where(is_de, np.array(EMODB)[block % 7], np.array(FALLBACK)[block % 4])
    emotion_p = rng.beta(4, 3, n_segments) * 0.7 + 0.3
    columns = {
        "path": np.array([f"speaker_{r % 97}/rec_{r}.wav" for r in range(n_rec)],
                         dtype=object)[rec],
        "start_s": index * window_s,
        "end_s": index * window_s + window_s,
        "speech": speech,
        "speech_p": np.where(speech, rng.beta(8, 1, n_segments), rng.beta(1, 8, n_segments)),
        "speech_s": np.where(speech, window_s * rng.uniform(0.5, 1.0, n_segments), 0.0),
        "lang": np.where(speech, np.array(LANGUAGES)[lang], None),
        "lang_p": np.where(speech, top, np.nan),
    }
    for j, code in enumerate(LANGUAGES):
        columns[f"lang_{code}"] = np.where(speech, lang_probs[:, j], np.nan)
    columns["emotion"] = np.where(speech, emotion, None)
    columns["emotion_p"] = np.where(speech, emotion_p, np.nan)
    for label in EMOTIONS:
        has = np.where(is_de, label in EMODB, label in FALLBACK) & speech
        share = (1 - emotion_p) / np.where(is_de, len(EMODB) - 1, len(FALLBACK) - 1)
        value = np.where(emotion == label, emotion_p, share)
        columns[f"emo_{label}"] = np.where(has, value, np.nan)
    columns["emotion_model"] = np.where(speech, np.where(is_de, "emotion-de", "emotion-multi"),
                                        None)
    schema = segments_schema(tuple(LANGUAGES))
    table = pa.Table.from_pandas(pd.DataFrame(columns), schema=schema, preserve_index=False)
    meta = {"version": annotate.__version__, "schema_version": 2,
            "settings": {"window_s": window_s, "hop_s": window_s, "sampling_rate": 16000,
                         "speech_detector": "silero", "speech_threshold": 0.5,
                         "languages": [], "chunk_s": 120.0},
            "models": [{"name": "language", "task": "language", "languages": ["*"],
                        "routed_for": None, "folder": "models/language", "hash": "sha256:00"}],
            "fingerprint": "0" * 64}
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}),
                   path)


def test_a_million_segments_report_quickly(tmp_path):
    table = tmp_path / "big.parquet"
    synthetic_table(table, 1_000_000)
    started = time.monotonic()
    text = write_report(table, tmp_path / "big.html").read_text()
    elapsed = time.monotonic() - started
    # Aggregating first keeps this to seconds; drawing per row would take minutes.
    assert elapsed < 40, f"report of 1e6 segments took {elapsed:.0f} s"
    assert len(images(text)) == 6
    assert "1,000,000</b><span>segments" in text
    assert len(text) < 3_000_000


def test_a_table_without_speech_still_reports(tmp_path):
    table = tmp_path / "quiet.parquet"
    frame = pd.DataFrame({"path": ["quiet.wav"], "start_s": [0.0], "end_s": [1.0],
                          "speech": [False], "speech_p": [0.01], "speech_s": [0.0]})
    for name in segments_schema(tuple(LANGUAGES)).names:
        if name not in frame:
            frame[name] = None
    pq.write_table(pa.Table.from_pandas(frame, schema=segments_schema(tuple(LANGUAGES)),
                                        preserve_index=False), table)
    text = write_report(table, tmp_path / "quiet.html").read_text()
    assert "No speech segments" in text and "No emotion labels" in text
    assert '<h3 class="path">quiet.wav</h3>' in text
    assert "No failures table beside the output" in text
