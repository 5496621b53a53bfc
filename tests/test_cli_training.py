"""Tests of the ``corpus``, ``train`` and ``evaluate`` commands through typer's CliRunner.

The commands are registered on a small app here, as ``annotate.cli`` does.
"""

# Test names say what each test checks.
# ruff: noqa: D103

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from annotate.cli.training import corpus, evaluate, train
from annotate.modelling.model_folder import read_model_folder
from annotate.testing import voice

SR = 16000
PITCH_HZ = {"W": 260.0, "N": 150.0, "T": 90.0}

app = typer.Typer()
app.command()(corpus)
app.command()(train)
app.command()(evaluate)
runner = CliRunner()


def text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())




@pytest.fixture(scope="module")
def emodb(tmp_path_factory) -> Path:
    """An EmoDB-like tree of 3 speakers x 3 emotions x 2 recordings, and one bad name."""
    root = tmp_path_factory.mktemp("emodb")
    (root / "wav").mkdir()
    seed = 0
    for speaker in ("03", "08", "10"):
        for letter, pitch in PITCH_HZ.items():
            for k in range(2):
                seed += 1
                sf.write(root / "wav" / f"{speaker}a0{k + 1}{letter}a.wav",
                         voice(1.2, pitch, seed, vibrato=False), SR)
    sf.write(root / "wav" / "notes.wav", voice(1.0, 100.0, 0, vibrato=False), SR)
    return root


@pytest.fixture(scope="module")
def trained(emodb, tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("models") / "emo"
    result = runner.invoke(app, [
        "train", "emotion", "--corpus", f"emodb={emodb}", "-o", str(folder), "--epochs", "2",
        "--architecture", "cnn",
        "--batch-size", "8", "--segment", "1.0", "--jobs", "1", "--no-augment",
    ])
    return folder, result


def test_corpus_prints_counts_and_writes_a_manifest(emodb, tmp_path):
    manifest = tmp_path / "emodb.parquet"
    result = runner.invoke(app, ["corpus", f"emodb={emodb}", "--to-manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "18 files, 3 speakers, 1 unparseable" in text(result)
    table = pd.read_parquet(manifest)
    assert len(table) == 18
    assert sorted(table["label"].unique()) == ["anger", "neutral", "sadness"]


def test_corpus_with_an_unknown_name_is_a_usage_error(emodb):
    result = runner.invoke(app, ["corpus", f"emodbx={emodb}"])
    assert result.exit_code == 2
    assert "expected one of" in text(result)


def test_train_writes_a_loadable_model_folder(trained):
    folder, result = trained
    assert result.exit_code == 0, result.output
    spec = read_model_folder(folder)
    assert spec.labels == ("anger", "neutral", "sadness")
    assert spec.features.segment_s == 1.0
    assert spec.training["hyperparameters"]["augment"] is False
    assert spec.training["hyperparameters"]["epochs"] == 2
    assert "epoch 1/2" in text(result) and "val UAR" in text(result)
    assert f"UAR {spec.metrics['uar']:.3f}" in text(result)


def test_train_refuses_bad_task_and_existing_output(emodb, trained):
    folder, _ = trained
    bad_task = runner.invoke(app, ["train", "mood", "--corpus", f"emodb={emodb}", "-o", "x"])
    assert bad_task.exit_code == 2
    assert "expected one of [attitude, emotion, language]" in text(bad_task)
    again = runner.invoke(app, ["train", "emotion", "--corpus", f"emodb={emodb}",
                                "-o", str(folder)])
    assert again.exit_code == 2 and "--overwrite" in text(again)


def test_evaluate_prints_metrics_and_writes_json(emodb, trained, tmp_path):
    folder, _ = trained
    out = tmp_path / "result.json"
    result = runner.invoke(app, ["evaluate", str(folder), "--corpus", f"emodb={emodb}",
                                 "--json", str(out), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    # Every recording is scored or named as holding no speech (the detector may miss
    # a synthetic voice's short clip).
    assert saved["n_recordings"] + saved["n_without_speech"] == 18
    assert saved["n_recordings"] >= 15
    assert np.sum(saved["confusion"]["matrix"]) == saved["n_recordings"]
    assert f"UAR {saved['uar']:.3f}" in text(result)
    assert "ECE" in text(result) and "confusion" in text(result)


def test_evaluate_plot_needs_matplotlib(emodb, trained, tmp_path):
    import importlib.util

    folder, _ = trained
    plot = tmp_path / "c.png"
    result = runner.invoke(app, ["evaluate", str(folder), "--corpus", f"emodb={emodb}",
                                 "--plot", str(plot), "--jobs", "1"])
    if importlib.util.find_spec("matplotlib") is None:
        assert result.exit_code == 2
        assert "pip install matplotlib" in text(result)
        assert not plot.exists()
    else:
        assert result.exit_code == 0, result.output
        assert plot.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_bad_protocol_and_missing_model(emodb, trained, tmp_path):
    folder, _ = trained
    bad = runner.invoke(app, ["evaluate", str(folder), "--corpus", f"emodb={emodb}",
                              "--protocol", "kfold"])
    assert bad.exit_code == 2 and "expected one of [holdout, loso]" in text(bad)
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "none"), "--corpus",
                                  f"emodb={emodb}"])
    assert missing.exit_code == 3 and "model folder not found" in text(missing)
    # an emotion model has no language identification to choose
    cascade = runner.invoke(app, ["evaluate", str(folder), "--corpus", f"emodb={emodb}",
                                  "--language-id", "cascade"])
    assert cascade.exit_code == 2 and "for a language head" in text(cascade)
