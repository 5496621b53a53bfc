"""The command line: exit codes, summarize, help text and the README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import write_audio
from typer.testing import CliRunner

from annotate.cli import app
from annotate.testing import speech_like

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_audio(root / "de" / "a.wav", speech_like(4.0, seed=1), 16000)
    write_audio(root / "b.flac", speech_like(2.0, seed=2), 16000)
    return root


def test_run_then_summarize(corpus, tmp_path, model_cli_args):
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["run", str(corpus), "-o", str(out), "-j", "1", *model_cli_args])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out)) == 3

    summary = runner.invoke(app, ["summarize", str(out), "--json"])
    assert summary.exit_code == 0, summary.output
    report = json.loads(summary.stdout)
    assert report["recordings"] == 2 and report["segments"] == 3
    assert report["audio_hours"] == pytest.approx(6.0 / 3600)
    assert sum(report["language_share_by_time"].values()) == pytest.approx(1.0)
    assert report["failures"]["count"] == 0

    per_recording = tmp_path / "per_recording.parquet"
    text = runner.invoke(app, ["summarize", str(out), "--per-recording", str(per_recording)])
    assert text.exit_code == 0 and "2 recordings" in text.stdout
    rows = pd.read_parquet(per_recording).set_index("path")
    assert rows.loc["de/a.wav", "duration_s"] == pytest.approx(4.0)
    assert rows[["lang_en", "lang_de", "lang_fr", "lang_it"]].sum(axis=1).round(6).eq(1).all()


def test_speech_threshold_lets_quiet_speech_through_the_energy_gate(tmp_path, model_cli_args):
    """With --speech-detector energy: speech peaking near -55 dBFS (RAVDESS's quietest clips)
    is lost at -45, kept at -65."""
    quiet = speech_like(3.0, seed=4)
    frames = quiet[: len(quiet) // 400 * 400].reshape(-1, 400)
    loudest = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)).max())
    write_audio(tmp_path / "corpus" / "quiet.wav", quiet * 10 ** ((-55 - loudest) / 20), 16000)
    speech = {}
    for threshold in (-45, -65):
        out = tmp_path / f"out{-threshold}.parquet"
        done = runner.invoke(app, ["run", str(tmp_path / "corpus"), "-o", str(out), "-j", "1",
                                   "--speech-detector", "energy",
                                   "--speech-threshold", str(threshold), *model_cli_args])
        assert done.exit_code == 0, done.output
        rows = pd.read_parquet(out)
        speech[threshold] = int(rows["speech"].sum())
        assert rows["speech_p"].isna().all()  # the gate gives no probability
        meta = json.loads(pq.read_schema(out).metadata[b"annotate"])
        assert meta["settings"]["speech_detector"] == "energy"
        assert meta["settings"]["speech_threshold"] == threshold
    assert speech == {-45: 0, -65: 1}
    bad = runner.invoke(app, ["run", str(tmp_path / "corpus"), "-o", str(tmp_path / "x.parquet"),
                              "--speech-detector", "energy", "--speech-threshold", "3",
                              *model_cli_args])
    assert bad.exit_code == 2 and "dBFS" in bad.output


def test_the_default_detector_is_silero_and_refuses_a_dbfs_threshold(tmp_path, model_cli_args):
    """The default run detects speech with Silero VAD (a probability per segment), and an
    old dBFS threshold is refused with a hint, never read as a probability."""
    write_audio(tmp_path / "corpus" / "talk.wav", speech_like(3.0, seed=4), 16000)
    out = tmp_path / "out.parquet"
    done = runner.invoke(app, ["run", str(tmp_path / "corpus"), "-o", str(out), "-j", "1",
                               *model_cli_args])
    assert done.exit_code == 0, done.output
    rows = pd.read_parquet(out)
    assert rows["speech"].all() and (rows["speech_p"] > 0.5).all()
    assert (rows["speech_s"] > 0.25).all()
    settings = json.loads(pq.read_schema(out).metadata[b"annotate"])["settings"]
    assert (settings["speech_detector"], settings["speech_threshold"]) == ("silero", 0.5)
    bad = runner.invoke(app, ["run", str(tmp_path / "corpus"), "-o", str(tmp_path / "x.parquet"),
                              "--speech-threshold", "-45", *model_cli_args])
    assert bad.exit_code == 2 and "--speech-detector energy" in bad.output


def test_partial_failure_exit_code_is_1(corpus, tmp_path, model_cli_args):
    (corpus / "junk.mp3").write_bytes(b"\x00\x01garbage" * 50)
    result = runner.invoke(app, ["run", str(corpus), "-o", str(tmp_path / "o.parquet"),
                                 "-j", "1", *model_cli_args])
    assert result.exit_code == 1
    failures = pd.read_parquet(tmp_path / "o.failures.parquet")
    assert failures["path"].tolist() == ["junk.mp3"]


def test_a_folder_without_audio_writes_an_empty_table_and_says_so(tmp_path, model_cli_args):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.txt").write_text("not audio")
    out = tmp_path / "o.parquet"
    result = runner.invoke(app, ["run", str(tmp_path / "corpus"), "-o", str(out), "-q",
                                 *model_cli_args])
    assert result.exit_code == 0
    assert "no recordings found" in result.output
    assert len(pd.read_parquet(out)) == 0


def test_usage_errors_exit_2_before_any_work(corpus, tmp_path, model_cli_args):
    missing_folder = tmp_path / "no" / "such" / "out.parquet"
    result = runner.invoke(app, ["run", str(corpus), "-o", str(missing_folder), *model_cli_args])
    assert result.exit_code == 2 and "does not exist" in result.output
    bad_lang = runner.invoke(app, ["run", str(corpus), "-o", str(tmp_path / "o.parquet"),
                                   "--languages", "xx", *model_cli_args])
    assert bad_lang.exit_code == 2 and "expected one of [de, en, fr, it]" in bad_lang.output
    bad_workers = runner.invoke(app, ["run", str(corpus), "-o", str(tmp_path / "o.parquet"),
                                      "--workers", "fibers", *model_cli_args])
    assert bad_workers.exit_code == 2
    assert "expected one of [auto, processes, threads]" in bad_workers.output
    assert not (tmp_path / "o.parquet.partial").exists()


def test_broken_model_folder_exits_3(corpus, tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    result = runner.invoke(app, ["run", str(corpus), "-o", str(tmp_path / "o.parquet"),
                                 "--language-model", str(broken)])
    assert result.exit_code == 3 and "model.json is missing" in result.output


def test_console_script_runs_without_traceback(corpus, tmp_path, model_cli_args):
    (corpus / "bad.wav").write_text("this is text, not audio")
    out = tmp_path / "o.parquet"
    proc = subprocess.run([sys.executable, "-m", "annotate", "run", str(corpus), "-o", str(out),
                           "-j", "2", *model_cli_args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "2 recordings annotated, 1 failed" in proc.stderr


def commands() -> list[str]:
    return sorted(command.name or command.callback.__name__ for command in app.registered_commands)


def test_every_command_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in commands():
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert len(result.stdout.strip().splitlines()) > 3, name
        assert re.search(rf"annotate {name}\b", readme), f"`annotate {name}` is not in README.md"


def test_readme_lists_every_output_column():
    readme = (ROOT / "README.md").read_text()
    from annotate.schema import load_schema

    for column in load_schema("segments")["columns"]:
        assert f"`{column['name']}`" in readme, column["name"]
