"""Augmented copies for heads: made once, trained on, never validated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from conftest import speech_counts, write_audio
from typer.testing import CliRunner

from annotate.cli import app
from annotate.modelling.model_folder import read_model_folder
from annotate.testing import create_backbone_folder, make_toy_emodb, speech_like
from annotate.training import search as heads
from annotate.training.copies import COPY_OF, augmented_copies
from annotate.training.encoding import Copies, EncodedRecordings
from annotate.training.search import out_of_fold_logits

runner = CliRunner()


def test_copies_are_perturbed_reproducible_and_skip_unreadable_files(tmp_path):
    write_audio(tmp_path / "a.wav", speech_like(2.0, seed=1), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not audio")
    items = pd.DataFrame({"path": [str(tmp_path / "a.wav"), str(tmp_path / "broken.wav")],
                          "label": ["anger", "neutral"], "speaker": ["s1", "s2"]})
    made = augmented_copies(items, 2, tmp_path / "copies", seed=7)
    assert list(made[COPY_OF]) == [str(tmp_path / "a.wav")] * 2
    assert list(made["label"]) == ["anger", "anger"] and list(made["speaker"]) == ["s1", "s1"]
    original, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    first = [sf.read(p, dtype="float32")[0] for p in made["path"]]
    for copy in first:
        assert abs(len(copy) - len(original)) < 0.1 * len(original)  # speed changes by <= 5 %
        assert not np.array_equal(copy[: len(original)], original[: len(copy)])
    assert not np.array_equal(first[0], first[1])
    # A second call finds the same files; another seed makes others.
    mtimes = [p.stat().st_mtime_ns for p in map(Path, made["path"])]
    again = augmented_copies(items, 2, tmp_path / "copies", seed=7)
    assert list(again["path"]) == list(made["path"])
    assert [p.stat().st_mtime_ns for p in map(Path, again["path"])] == mtimes
    other = augmented_copies(items, 2, tmp_path / "copies", seed=8)
    assert set(other["path"]).isdisjoint(made["path"])
    assert augmented_copies(items, 0, tmp_path / "copies", seed=7).empty


def test_a_folds_head_never_trains_on_copies_of_its_validation_speakers(monkeypatch):
    rng = np.random.default_rng(0)
    n = 6
    meta = pd.DataFrame({"path": [f"r{i}" for i in range(n)], "label": ["a", "b"] * 3})
    data = EncodedRecordings(meta, [rng.standard_normal((2, 3, 4)).astype(np.float32)
                                    for _ in range(n)], [np.full(2, 3.0) for _ in range(n)])
    copy_meta = pd.DataFrame({"path": [f"c{i}" for i in range(n)], "label": meta["label"]})
    copies = Copies(EncodedRecordings(copy_meta, [rng.standard_normal((1, 3, 4)).astype(
        np.float32) for _ in range(n)], [np.full(1, 3.0) for _ in range(n)]), np.arange(n))
    folds = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    seen = []

    class Head:
        def predict(self, x, **_):
            return np.zeros((len(x), 2), np.float32)

    def fake_fit(x, y, weights, n_labels, settings, seed):
        seen.append(len(x))
        return Head()

    monkeypatch.setattr(heads, "fit_head", fake_fit)
    logits = out_of_fold_logits(data, np.array([0, 1] * 3), 2, {"layers": (1, 2)}, folds, 0,
                                copies)
    assert logits.shape == (2 * n, 2)  # the originals' segments only
    # Each fold trains on the other 4 originals (2 segments each) and their 4 copies (1 each).
    assert seen == [4 * 2 + 4 * 1] * 3


def test_annotate_train_makes_copies_and_validates_on_originals_only(tmp_path):
    backbone = create_backbone_folder(tmp_path / "tiny-whisper")
    emodb = make_toy_emodb(tmp_path / "emodb", speakers=("03", "08", "09", "10"),
                           emotions="WN", per_emotion=2)
    folder = tmp_path / "head"
    result = runner.invoke(app, [
        "train", "emotion", "--corpus", f"emodb={emodb}", "-o", str(folder),
        "--backbone", str(backbone.folder), "--search", "0", "--folds", "2", "--copies", "1",
        "--cache-dir", str(tmp_path / "cache"), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    spec = read_model_folder(folder)
    # The recordings with speech (the detector may not hear a synthetic voice's short clip),
    # and one copy of each
    heard, _ = speech_counts(sorted((emodb / "wav").glob("*.wav")), backbone.features)
    assert heard >= 10
    assert spec.training["recordings"] == spec.metrics["validation"]["recordings"] == heard
    # a copy of every recording is written; those that hold speech are trained on
    assert 8 <= spec.training["augmented_copies"] <= 16
    assert len(list((tmp_path / "cache" / "augmented").glob("*.flac"))) == 16
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 32
