"""Model folders that must be refused (exit 3, a clear message) and the hash in the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_audio
from typer.testing import CliRunner

from annotate.cli import app
from annotate.modelling.inference import tensorflow
from annotate.modelling.model_folder import folder_hash
from annotate.testing import TEST_FEATURES, speech_like

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path) -> Path:
    write_audio(tmp_path / "corpus" / "a.wav", speech_like(2.0), 16000)
    return tmp_path / "corpus"


def says(output: str, text: str) -> bool:
    """Whether ``text`` is in ``output``, however the console wrapped the lines."""
    return "".join(text.split()) in "".join(output.split())


def run_with_language_model(corpus: Path, folder: Path, models) -> object:
    out = corpus.parent / "out.parquet"
    return runner.invoke(app, ["run", str(corpus), "-o", str(out), "-j", "1",
                               "--language-model", str(folder),
                               "--emotion-model", f"*={models['emotion-multi']}"])


def copy_model(models, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(models["language"], folder)
    return folder


def edit_spec(folder: Path, change) -> None:
    spec = json.loads((folder / "model.json").read_text())
    change(spec)
    (folder / "model.json").write_text(json.dumps(spec))


def save_network(folder: Path, body) -> None:
    """Replace the folder's Keras model by ``inputs -> body(inputs) -> Dense(4)``."""
    keras = tensorflow().keras
    inputs = keras.Input((TEST_FEATURES.n_frames, TEST_FEATURES.n_mels))
    x = keras.layers.GlobalAveragePooling1D()(body(keras, inputs))
    keras.Model(inputs, keras.layers.Dense(4)(x)).save(folder / "model.keras")


def test_missing_labels_are_refused(corpus, tmp_path, models):
    folder = copy_model(models, tmp_path)
    edit_spec(folder, lambda spec: spec.pop("labels"))
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 3
    assert says(result.output, "model.json lacks labels")


def test_empty_labels_are_refused(corpus, tmp_path, models):
    folder = copy_model(models, tmp_path)
    edit_spec(folder, lambda spec: spec.update(labels=[]))
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 3
    assert says(result.output, "labels must be a non-empty list of strings")


def test_feature_settings_that_do_not_fit_the_model_are_refused(corpus, tmp_path, models):
    folder = copy_model(models, tmp_path)
    edit_spec(folder, lambda spec: spec["features"].update(n_mels=40))
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 3
    assert says(result.output, "the model takes input frames x mels (101, 32), but "
                               "model.json's feature settings give (101, 40)")


def test_a_wrong_number_of_outputs_is_refused(corpus, tmp_path, models):
    folder = copy_model(models, tmp_path)
    edit_spec(folder, lambda spec: spec.update(labels=["en", "de", "fr", "it", "es"]))
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 3
    assert says(result.output, "the model has 4 outputs but model.json lists 5 labels")


def test_a_lambda_layer_is_refused(corpus, tmp_path, models):
    folder = copy_model(models, tmp_path)
    save_network(folder, lambda keras, x: keras.layers.Lambda(lambda t: t * 2.0)(x))
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 3
    assert says(result.output, "in safe mode (custom code and Lambda layers are refused)")
    assert says(result.output, "deserialization of a `Lambda` layer")


def test_a_custom_layer_class_is_refused(corpus, tmp_path, models):
    keras = tensorflow().keras

    class Tripler(keras.layers.Layer):  # custom code, not registered with Keras
        def call(self, x):
            return x * 3.0

    folder = copy_model(models, tmp_path)
    save_network(folder, lambda keras, x: Tripler()(x))
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 3
    assert says(result.output, "in safe mode (custom code and Lambda layers are refused)")
    assert says(result.output, "Could not locate class 'Tripler'")


def test_weights_that_are_not_a_keras_file_are_refused(corpus, tmp_path, models):
    folder = copy_model(models, tmp_path)
    (folder / "model.keras").write_bytes(b"not a zip archive")
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 3
    assert says(result.output, "cannot load")


def test_a_refused_model_does_not_block_the_next_run(corpus, tmp_path, models):
    """Fixing the model must be enough: no --overwrite for state the refused run left."""
    folder = copy_model(models, tmp_path)
    original = (folder / "model.json").read_text()
    edit_spec(folder, lambda spec: spec.update(labels=["en", "de", "fr", "it", "es"]))
    assert run_with_language_model(corpus, folder, models).exit_code == 3
    (folder / "model.json").write_text(original)
    result = run_with_language_model(corpus, folder, models)
    assert result.exit_code == 0, result.output


def test_each_model_folders_hash_is_in_the_output_metadata(corpus, tmp_path, models):
    folder = copy_model(models, tmp_path)
    assert run_with_language_model(corpus, folder, models).exit_code == 0
    out = corpus.parent / "out.parquet"
    described = json.loads(pq.read_schema(out).metadata[b"annotate"])["models"]
    hashes = {Path(m["folder"]).name: m["hash"] for m in described}
    assert hashes == {"model": folder_hash(folder),
                      "emotion-multi": folder_hash(models["emotion-multi"])}
    assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in hashes.values())

    # Any change to the folder changes its hash, so the old output is not taken as current.
    (folder / "MODEL_CARD.md").write_text("# model\n\nEdited card.\n")
    assert folder_hash(folder) != hashes["model"]
    rerun = run_with_language_model(corpus, folder, models)
    assert rerun.exit_code == 2 and says(rerun.output, "made with other settings")


def test_the_hash_covers_names_and_contents(tmp_path, models):
    folder = copy_model(models, tmp_path)
    before = folder_hash(folder)
    (folder / "extra.txt").write_text("")
    with_extra = folder_hash(folder)
    (folder / "extra.txt").rename(folder / "other.txt")
    assert len({before, with_extra, folder_hash(folder)}) == 3
