"""The models shipped in the package: found from anywhere, complete, and applied by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
from conftest import write_audio

from annotate.modelling.model_folder import read_model_folder
from annotate.resources import resource_dir
from annotate.testing import speech_like

SHIPPED = {"language", "emotion-de", "emotion-en", "emotion-it", "emotion-multi"}


def bundled_env() -> dict:
    env = dict(os.environ)
    env.pop("ANNOTATE_MODELS", None)
    return env


def test_every_bundled_model_folder_is_complete_and_small():
    folder = resource_dir("models")
    found = {p.name for p in folder.iterdir() if (p / "model.json").is_file()}
    assert found == SHIPPED
    for name in found:
        spec = read_model_folder(folder / name)
        size = sum(f.stat().st_size for f in (folder / name).iterdir())
        assert size < 5 * 2**20, (name, size)
        assert spec.metrics and spec.training and spec.temperature > 0
        card = (folder / name / "MODEL_CARD.md").read_text()
        assert "Licences" in card or "licence" in card.lower()
    language = read_model_folder(folder / "language")
    assert set(language.labels) == {"en", "de", "fr", "it"}


def test_the_bundled_backbone_is_complete_licensed_and_within_the_budget():
    from annotate.modelling.backbone_folder import read_backbone_folder

    folder = resource_dir("models")
    backbone = read_backbone_folder(folder / "whisper-base")
    assert backbone.litert is not None and backbone.litert_problem((0, 1, 2, 3, 4)) is None
    # Whisper's language identification ships too, calibrated on validation speakers.
    assert backbone.language_problem() is None and backbone.language.temperature != 1.0
    assert "training speakers" in backbone.language.fitted_on
    assert "MIT" in (backbone.folder / "LICENSE").read_text()
    assert "OpenAI" in (backbone.folder / "MODEL_CARD.md").read_text()
    for name in SHIPPED:
        head = read_model_folder(folder / name)
        assert head.backbone is not None and head.backbone.name == "whisper-base"
        assert max(head.backbone.layers) <= backbone.litert.n_layers
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < 100 * 10**6, total


def test_bundled_models_are_used_by_default_from_any_directory(tmp_path):
    write_audio(tmp_path / "c" / "a.wav", speech_like(3.0, seed=3), 16000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "annotate", "run", str(tmp_path / "c"), "-o", "out.parquet",
         "--languages", "de", "-j", "1"],
        cwd=elsewhere, env=bundled_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_parquet(elsewhere / "out.parquet")
    assert set(frame.loc[frame["speech"], "emotion_model"]) == {"emotion-de"}
    metadata = json.loads(pq.read_schema(elsewhere / "out.parquet").metadata[b"annotate"])
    names = {m["name"] for m in metadata["models"]}
    assert SHIPPED <= names
    assert [b["name"] for b in metadata["backbones"]] == ["whisper-base"]


def test_annotate_models_shows_each_heads_held_out_figures():
    """The held-out figures recorded in model.json reach the listing, set by set."""
    result = subprocess.run([sys.executable, "-m", "annotate", "models"], capture_output=True,
                            text=True, env={**bundled_env(), "COLUMNS": "400"}, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines()
            if line.count("│") > 3}
    emodb = read_model_folder(resource_dir("models") / "emotion-de").metrics["heldout"]
    figures = emodb["sets"]["emodb"]
    assert (f"emodb: acc {figures['accuracy']:.2f}, UAR {figures['uar']:.2f}, "
            f"ECE {figures['ece']:.2f}") in rows["emotion-de"]
    assert "commonvoice: acc" in rows["language"] and "telephone: acc" in rows["language"]
    cascade = read_model_folder(resource_dir("models") / "language").cascade
    assert f"Whisper's language ID below top p {cascade.threshold}" in rows["language"]
    adapted = read_model_folder(resource_dir("models") / "emotion-en").speaker_adaptation
    uar = adapted.validation["corpora"]["ravdess"]["uar_adapted"]
    assert f"--speakers: ravdess UAR {uar:.2f}" in rows["emotion-en"]


def test_the_bundled_language_model_runs_the_cascade_by_default(tmp_path):
    """Its cascade was fitted on validation speakers, and a plain run uses it."""
    from annotate.modelling.model_set import ModelSet

    head = read_model_folder(resource_dir("models") / "language")
    assert head.cascade is not None and 0 < head.cascade.threshold < 1
    assert "training speakers" in head.cascade.fitted_on
    table = head.cascade.validation["per_recording_accuracy"]
    chosen = next(r for r in table if r["threshold"] == head.cascade.threshold)
    alone = next(r for r in table if r["threshold"] == 0.0)
    assert chosen["mean_accuracy"] > alone["mean_accuracy"]
    models = ModelSet.load(bundled=resource_dir("models"))
    assert models.choose_language_id(None) == ("cascade", ("de", "en", "fr", "it"))
    assert models.choose_language_id(["de"])[0] == "head"
