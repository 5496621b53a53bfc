"""Heads learn from a backbone's float states, whatever export a run reads."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.testing import create_backbone_folder


@pytest.fixture(scope="module")
def int8_backbone(tmp_path_factory):
    return create_backbone_folder(tmp_path_factory.mktemp("bb") / "tiny-whisper", n_layers=2,
                                  quantize=True, language=True)


def _pooled(spec, backend: str, segments: np.ndarray) -> np.ndarray:
    from annotate.backbone.runtime import Backbone

    frames = np.full(len(segments), segments.shape[1])
    layers = tuple(range(spec.litert.n_layers + 1))
    return Backbone(spec, layers, backend, segments.shape[1]).pooled([segments], frames)


def test_a_float_export_is_its_own_reference(tmp_path):
    from annotate.training.reference import reference_backbone

    spec = create_backbone_folder(tmp_path / "float")
    assert reference_backbone(spec, tmp_path / "cache") is spec
    assert not (tmp_path / "cache").exists()


def test_an_int8_exports_reference_gives_the_float_states(int8_backbone, tmp_path):
    from annotate.training.reference import reference_backbone

    reference = reference_backbone(int8_backbone, tmp_path / "cache")
    assert reference.folder.parent == tmp_path / "cache" / "reference"
    assert (reference.litert.quantization, reference.language.quantization) == (
        "float16", "float16")
    assert (reference.name, reference.litert.n_layers, reference.language.temperature) == (
        int8_backbone.name, int8_backbone.litert.n_layers, int8_backbone.language.temperature)
    assert reference.weights_sha256() == int8_backbone.weights_sha256()

    segments = np.random.default_rng(0).normal(size=(3, 100, 16)).astype(np.float32)
    keras = _pooled(int8_backbone, "keras", segments)
    scale = np.abs(keras).max()
    # The tiny weights are float16 already: the reference loses nothing; int8 does.
    assert np.abs(_pooled(reference, "litert", segments) - keras).max() < 1e-4 * scale
    assert np.abs(_pooled(int8_backbone, "litert", segments) - keras).max() > 1e-3 * scale

    built = (reference.folder / "model.tflite").stat().st_mtime_ns
    again = reference_backbone(int8_backbone, tmp_path / "cache")
    assert again.folder == reference.folder
    assert (again.folder / "model.tflite").stat().st_mtime_ns == built  # kept, not rebuilt


def test_the_reference_follows_a_refitted_temperature(int8_backbone, tmp_path):
    import dataclasses
    import json
    import shutil

    from annotate.modelling.backbone_folder import SPEC_FILE, read_backbone_folder
    from annotate.training.reference import reference_backbone

    folder = tmp_path / "tiny-whisper"
    shutil.copytree(int8_backbone.folder, folder)
    assert reference_backbone(read_backbone_folder(folder), tmp_path / "cache").language \
        .temperature == 1.0
    raw = json.loads((folder / SPEC_FILE).read_text())
    raw["language"] = dataclasses.replace(int8_backbone.language, temperature=1.7).to_json()
    (folder / SPEC_FILE).write_text(json.dumps(raw))
    reference = reference_backbone(read_backbone_folder(folder), tmp_path / "cache")
    assert reference.language.temperature == 1.7


def test_annotate_train_encodes_with_the_reference(int8_backbone, tmp_path):
    from annotate.modelling.model_folder import read_model_folder
    from annotate.testing import make_toy_emodb
    from annotate.training.corpora import read_corpus
    from annotate.training.heads import train_on_corpora

    corpus = read_corpus("emodb", make_toy_emodb(tmp_path / "emodb", per_emotion=2))
    cache = tmp_path / "cache"
    train_on_corpora("emotion", [corpus], tmp_path / "head", backbone=int8_backbone.folder,
                     trials=0, n_folds=2, copies=0, cache_dir=cache, jobs=1,
                     report=lambda line: None)
    (reference,) = (cache / "reference").iterdir()
    assert (reference / "model.tflite").is_file()
    assert read_model_folder(tmp_path / "head").backbone.name == int8_backbone.name
