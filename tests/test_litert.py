"""The LiteRT backend: same outputs as Keras, no TensorFlow in a run, Keras where it must."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import LANGUAGES, write_audio
from typer.testing import CliRunner

import annotate
from annotate.cli import app
from annotate.errors import ModelError, UsageError
from annotate.features import segment_features
from annotate.modelling.inference import MICRO_BATCH, Classifier, tensorflow
from annotate.modelling.litert_export import convert_to_litert, export_litert
from annotate.modelling.model_folder import ModelSpec, read_model_folder, write_model_folder
from annotate.modelling.networks import ARCHITECTURES, build_network
from annotate.testing import TEST_FEATURES, create_model_folder, speech_like

ROOT = Path(__file__).resolve().parent.parent
PROB_COLS = [f"lang_{c}" for c in LANGUAGES] + ["lang_p", "emotion_p"]
runner = CliRunner()


def speech_features(n: int) -> np.ndarray:
    """``n`` segments of speech-like audio as the pipeline computes them."""
    return np.stack([segment_features(speech_like(TEST_FEATURES.segment_s, seed=i), TEST_FEATURES)
                     for i in range(n)])


def random_features(n: int) -> np.ndarray:
    """``n`` segments of loud noise (wider than real features)."""
    shape = (n, TEST_FEATURES.n_frames, TEST_FEATURES.n_mels)
    return (3 * np.random.default_rng(7).standard_normal(shape)).astype(np.float32)


def run_metadata(path: Path) -> dict:
    """The ``annotate`` metadata of a written table."""
    return json.loads(pq.read_schema(path).metadata[b"annotate"])


def copy_model(source: Path, target: Path) -> Path:
    """A copy of a model folder, to change."""
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("model", ["language", "emotion-de"])
@pytest.mark.parametrize("inputs", [speech_features, random_features])
def test_litert_logits_match_keras(models, model, inputs):
    """LiteRT's logits equal Keras's to 1e-4, with the same top label."""
    spec = read_model_folder(models[model])
    features = inputs(2 * MICRO_BATCH + 5)  # two full blocks and a padded one
    litert, keras = Classifier(spec), Classifier(spec, "keras")
    assert (litert.backend, keras.backend) == ("litert", "keras")
    got, want = litert.logits(features), keras.logits(features)
    assert got.shape == want.shape == (len(features), len(spec.labels))
    assert np.abs(got - want).max() < 1e-4
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert np.ptp(got, axis=0).max() > 1e-3  # the logits depend on the input


def test_a_segments_logits_do_not_depend_on_its_neighbours(models):
    """Fixed blocks: the same segment gets the same bits however it is batched."""
    classifier = Classifier(read_model_folder(models["language"]))
    features = speech_features(40)
    whole = classifier.logits(features)
    pieces = classifier.logits([features[:3], features[3:35], features[35:]])
    alone = np.concatenate([classifier.logits(features[i:i + 1]) for i in range(0, 40, 7)])
    assert np.array_equal(whole, pieces)
    assert np.array_equal(whole[::7], alone)


def test_one_interpreter_serves_several_threads(models):
    """Concurrent callers (Dask threads, Streamlit) get the serial results."""
    classifier = Classifier(read_model_folder(models["language"])).load()
    features = random_features(3 * MICRO_BATCH)
    want = classifier.logits(features)
    results: list[np.ndarray] = []

    def work():
        for _ in range(5):
            results.append(classifier.logits(features))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 20 and all(np.array_equal(r, want) for r in results)


def test_runs_on_keras_and_litert_give_the_same_table(mixed_corpus, tmp_path, model_args):
    """The same rows and labels, probabilities within 1e-4, and the backend recorded."""
    tables = {}
    for backend in ("keras", "litert"):
        out = tmp_path / f"{backend}.parquet"
        annotate.run([mixed_corpus], out, jobs=1, backend=backend, **model_args)
        assert {m["backend"] for m in run_metadata(out)["models"]} == {backend}
        tables[backend] = pd.read_parquet(out)
    keras, litert = tables["keras"], tables["litert"]
    keys = ["path", "start_s", "end_s", "speech", "lang", "emotion", "emotion_model"]
    pd.testing.assert_frame_equal(keras[keys], litert[keys])
    assert keras["speech"].sum() >= 8
    np.testing.assert_allclose(litert[PROB_COLS].to_numpy(float), keras[PROB_COLS].to_numpy(float),
                               atol=1e-4, rtol=0)


def test_auto_takes_litert_and_keras_where_there_is_no_current_export(tmp_path, models,
                                                                      model_args):
    """A folder without model.tflite, or whose model.keras changed since, runs on Keras."""
    write_audio(tmp_path / "c" / "a.wav", speech_like(4.0, seed=3), 16000)
    no_export = copy_model(models["language"], tmp_path / "no-export")
    (no_export / "model.tflite").unlink()
    stale = copy_model(models["language"], tmp_path / "stale")
    retrained = create_model_folder(tmp_path / "retrained", "language", LANGUAGES, seed=5,
                                    litert=False)
    shutil.copy(retrained.weights_path, stale / "model.keras")

    outputs = {}
    for name, folder in (("exported", models["language"]), ("no-export", no_export),
                         ("stale", stale), ("retrained", retrained.folder)):
        out = tmp_path / f"{name}.parquet"
        annotate.run([tmp_path / "c"], out, jobs=1,
                     **{**model_args, "language_model": folder})
        outputs[name] = out
    backends = {name: run_metadata(out)["models"][0]["backend"] for name, out in outputs.items()}
    assert backends == {"exported": "litert", "no-export": "keras", "stale": "keras",
                        "retrained": "keras"}
    frames = {name: pd.read_parquet(out) for name, out in outputs.items()}
    lang = [f"lang_{c}" for c in LANGUAGES]
    np.testing.assert_allclose(frames["no-export"][lang], frames["exported"][lang],
                               atol=1e-4, rtol=0)
    # The stale folder runs its new weights, not the old export.
    np.testing.assert_array_equal(frames["stale"][lang], frames["retrained"][lang])
    changed = frames["stale"][lang].to_numpy() - frames["exported"][lang].to_numpy()
    assert np.abs(changed).max() > 1e-3


def test_litert_asked_for_but_unusable_says_why(tmp_path, models):
    """Forcing LiteRT where it cannot run is a ModelError naming the reason."""
    stale = copy_model(models["language"], tmp_path / "stale")
    retrained = create_model_folder(tmp_path / "retrained", "language", LANGUAGES, seed=5,
                                    litert=False)
    shutil.copy(retrained.weights_path, stale / "model.keras")
    with pytest.raises(ModelError, match="weights changed since the export"):
        Classifier(read_model_folder(stale), "litert").load()
    with pytest.raises(ModelError, match="model.json records no LiteRT export"):
        Classifier(read_model_folder(retrained.folder), "litert").load()
    (stale / "model.tflite").unlink()
    with pytest.raises(ModelError, match="model.tflite is missing"):
        Classifier(read_model_folder(stale), "litert").load()


def test_an_export_for_blocks_of_several_segments_runs_on_keras(tmp_path, monkeypatch):
    """Older exports fixed blocks of 32: auto takes Keras, and forcing LiteRT says why."""
    import annotate.modelling.inference as inference

    spec = create_model_folder(tmp_path / "m", "emotion", ["anger", "neutral"], seed=4,
                               litert=False)
    with monkeypatch.context() as patch:
        patch.setattr(inference, "MICRO_BATCH", 4)
        export_litert(spec.folder)
    exported = read_model_folder(spec.folder)
    assert exported.litert_problem() is None  # the file itself is current
    assert Classifier(exported).backend == "keras"
    with pytest.raises(ModelError, match="exported for blocks of 4 segments"):
        Classifier(exported, "litert").load()
    features = speech_features(3)
    assert Classifier(exported).logits(features).shape == (3, 2)


def test_backend_from_the_environment_and_bad_values(models, monkeypatch):
    """$ANNOTATE_BACKEND sets the default; bad values list the valid ones."""
    spec = read_model_folder(models["language"])
    monkeypatch.setenv("ANNOTATE_BACKEND", "keras")
    assert Classifier(spec).backend == "keras"
    assert Classifier(spec, "auto").backend == "litert"  # an explicit request wins
    monkeypatch.setenv("ANNOTATE_BACKEND", "tflite")
    with pytest.raises(UsageError, match=r"bad ANNOTATE_BACKEND 'tflite', expected one of "
                                         r"\[auto, keras, litert\]"):
        Classifier(spec).load()
    with pytest.raises(UsageError, match=r"bad backend 'onnx'"):
        Classifier(spec, "onnx").load()


def test_backend_option_of_annotate_run(tmp_path, models, model_cli_args):
    """--backend: bad value exit 2, LiteRT without an export exit 3, keras runs."""
    write_audio(tmp_path / "c" / "a.wav", speech_like(2.0, seed=4), 16000)
    out = tmp_path / "o.parquet"
    bad = runner.invoke(app, ["run", str(tmp_path / "c"), "-o", str(out), "--backend", "onnx",
                              *model_cli_args])
    assert bad.exit_code == 2 and "expected one of [auto, keras, litert]" in bad.output
    no_export = copy_model(models["language"], tmp_path / "no-export")
    (no_export / "model.tflite").unlink()
    refused = runner.invoke(app, ["run", str(tmp_path / "c"), "-o", str(out), "-j", "1",
                                  *model_cli_args, "--language-model", str(no_export),
                                  "--backend", "litert"])
    assert refused.exit_code == 3
    said = "".join(refused.output.split())  # however the console wrapped it
    assert "LiteRTbackendcannotrunthismodel" in said
    ok = runner.invoke(app, ["run", str(tmp_path / "c"), "-o", str(out), "-j", "1",
                             *model_cli_args, "--backend", "keras"])
    assert ok.exit_code == 0, ok.output
    assert {m["backend"] for m in run_metadata(out)["models"]} == {"keras"}


def test_an_output_made_with_the_other_backend_is_not_taken_as_current(tmp_path, model_args):
    """The backend is part of the fingerprint: the outputs differ in the last bits."""
    write_audio(tmp_path / "c" / "a.wav", speech_like(2.0, seed=4), 16000)
    out = tmp_path / "o.parquet"
    annotate.run([tmp_path / "c"], out, jobs=1, backend="litert", **model_args)
    again = annotate.run([tmp_path / "c"], out, jobs=1, backend="litert", **model_args)
    assert again.already_complete
    with pytest.raises(UsageError, match="made with other settings"):
        annotate.run([tmp_path / "c"], out, jobs=1, backend="keras", **model_args)


WRAPPER = """
import json, sys
from annotate.cli import app
try:
    app(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules,
                  "keras": "keras" in sys.modules}))
"""


@pytest.mark.parametrize("backend", ["auto", "keras"])
def test_a_litert_run_never_imports_tensorflow(tmp_path, model_cli_args, backend):
    """`annotate run` with exported models leaves TensorFlow unimported, and stderr empty."""
    write_audio(tmp_path / "c" / "a.wav", speech_like(3.5, seed=8), 16000)
    out = tmp_path / "o.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, "run", str(tmp_path / "c"), "-o", str(out), "-j", "2",
         "-q", "--backend", backend, *model_cli_args],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    used = {m["backend"] for m in run_metadata(out)["models"]}
    if backend == "auto":
        assert used == {"litert"}
        assert not report["tensorflow"] and not report["keras"]
        assert proc.stderr == ""  # nor LiteRT's start-up notes
    else:  # the same probe sees TensorFlow when Keras runs the models
        assert used == {"keras"} and report["tensorflow"]


def test_export_litert_records_the_keras_file_and_changes_nothing_else(tmp_path):
    """model.json gains only its litert entry; no temporary file is left."""
    spec = create_model_folder(tmp_path / "m", "emotion", ["anger", "neutral"], seed=4,
                               litert=False)
    before = json.loads((spec.folder / "model.json").read_text())
    path = export_litert(spec.folder)
    assert path == spec.folder / "model.tflite" and path.stat().st_size > 1000
    after = json.loads((spec.folder / "model.json").read_text())
    digest = after.pop("litert")["keras_sha256"]
    assert after == before and len(digest) == 64
    exported = read_model_folder(spec.folder)
    assert exported.litert_problem() is None and Classifier(exported).backend == "litert"
    assert sorted(p.name for p in spec.folder.iterdir()) == [
        "MODEL_CARD.md", "model.json", "model.keras", "model.tflite"]  # no temporary files


def test_export_refuses_a_model_keras_refuses(tmp_path, models):
    """No export of weights that do not load in safe mode; model.json unchanged."""
    folder = copy_model(models["language"], tmp_path / "m")
    (folder / "model.keras").write_bytes(b"not a zip archive")
    before = (folder / "model.json").read_text()
    with pytest.raises(ModelError, match="cannot load"):
        export_litert(folder)
    assert (folder / "model.json").read_text() == before


@pytest.mark.parametrize("entry, message", [
    ("model.tflite", "litert must be an object"),
    ({"file": "../x.tflite", "keras_sha256": "0" * 64}, "litert.file must name a .tflite"),
    ({"file": "model.tflite", "keras_sha256": "abc"}, "64 lowercase hex digits"),
])
def test_a_malformed_litert_entry_is_refused(tmp_path, models, entry, message):
    """A broken litert entry in model.json is a broken model folder."""
    folder = copy_model(models["language"], tmp_path / "m")
    spec = json.loads((folder / "model.json").read_text())
    spec["litert"] = entry
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match=message):
        read_model_folder(folder)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_exports_and_matches_keras(tmp_path, architecture):
    """Recurrent layers too: the export's static batch lets the converter lower them."""
    keras = tensorflow().keras
    keras.utils.set_random_seed(0)
    model = build_network(architecture, TEST_FEATURES, 3)
    spec = ModelSpec(folder=tmp_path / architecture, name=architecture, task="emotion",
                     labels=("anger", "neutral", "sadness"), languages=("*",),
                     weights="model.keras", features=TEST_FEATURES)
    write_model_folder(spec, "# test\n")
    model.save(spec.weights_path)
    export_litert(spec.folder)
    exported = read_model_folder(spec.folder)
    features = random_features(MICRO_BATCH + 3)
    got = Classifier(exported).logits(features)
    want = Classifier(exported, "keras").logits(features)
    assert np.abs(got - want).max() < 1e-4


def test_a_conversion_that_does_not_match_is_refused_or_left_to_keras(tmp_path, monkeypatch):
    """Exporting refuses; training keeps the model on Keras, without the old export."""
    spec = create_model_folder(tmp_path / "m", "emotion", ["anger", "neutral"], seed=4,
                               litert=False)
    monkeypatch.setattr("annotate.modelling.litert_export.EXPORT_TOLERANCE", -1.0)
    with pytest.raises(ModelError, match="the LiteRT conversion differs from the Keras model"):
        export_litert(spec.folder)
    assert not (spec.folder / "model.tflite").exists()
    (spec.folder / "model.tflite").write_bytes(b"an export of older weights")
    with pytest.warns(UserWarning, match="will run this model on Keras"):
        kept = convert_to_litert(spec, required=False)  # as `annotate train` calls it
    assert kept.litert is None and not (spec.folder / "model.tflite").exists()


def test_a_corrupt_export_is_refused(tmp_path, models):
    """A current but unreadable model.tflite is a broken folder, as a bad model.keras is."""
    folder = copy_model(models["language"], tmp_path / "m")
    (folder / "model.tflite").write_bytes(b"junk" * 100)
    with pytest.raises(ModelError, match="cannot load .*model.tflite"):
        Classifier(read_model_folder(folder)).load()


def test_annotate_train_exports_and_measures_what_annotate_run_will_use(tmp_path, monkeypatch):
    """The trained folder has a current export, and its card's metrics came from LiteRT."""
    from annotate.modelling.inference import LiteRTNetwork
    from annotate.testing import make_toy_emodb
    from annotate.training.corpora import read_corpus
    from annotate.training.train import train

    calls = []
    outputs = LiteRTNetwork.outputs
    monkeypatch.setattr(LiteRTNetwork, "outputs",
                        lambda self, arrays: calls.append(len(arrays)) or outputs(self, arrays))
    corpus = read_corpus("emodb", make_toy_emodb(tmp_path / "emodb", per_emotion=2))
    spec = train("emotion", [corpus], tmp_path / "emo", epochs=1, batch_size=8,
                 features=TEST_FEATURES, network={"filters": [4, 8, 8, 8]}, jobs=1, seed=3)
    written = read_model_folder(spec.folder)
    assert written.litert is not None and written.litert_problem() is None
    assert Classifier(written).backend == "litert"
    assert calls  # the validation logits behind the metrics
    assert written.metrics["per_segment"]["n"] > 0
