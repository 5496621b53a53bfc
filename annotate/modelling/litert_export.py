"""The LiteRT export of a model folder: ``model.keras`` converted to ``model.tflite``.

``annotate run`` runs a model on LiteRT, without importing TensorFlow, when
its folder holds an export made from the current ``model.keras``
(:meth:`~annotate.modelling.model_folder.ModelSpec.litert_problem`). Converting needs
TensorFlow; ``annotate train`` exports every model it writes, and
``scripts/export_litert.py`` exports existing folders.

The export is float32 (no quantisation, built-in operations only) with the
batch fixed at :data:`~annotate.modelling.inference.MICRO_BATCH`, the one shape the
interpreter runs (a static shape also lets the converter lower recurrent
layers to built-in operations). It is checked against Keras on probe inputs
before it replaces anything, so that the two backends give the same outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from annotate.errors import ModelError
from annotate.modelling.model_folder import (
    LITERT_FILE,
    SPEC_FILE,
    LiteRTExport,
    ModelSpec,
    file_sha256,
    read_model_folder,
)

#: Largest |logit difference| (relative to the largest logit, once above 1)
#: between Keras and LiteRT on the probe inputs
#: that an export may show (float32 reorderings give about 1e-6).
EXPORT_TOLERANCE = 1e-4


def export_litert(folder: str | Path) -> Path:
    """Convert a model folder's Keras model for LiteRT and record it in ``model.json``.

    ``model.tflite`` replaces any earlier export atomically; ``model.json``
    gains (or updates) its ``litert`` entry and is otherwise unchanged.

    Args:
        folder: A complete model folder.

    Returns:
        The ``.tflite`` file written.

    Raises:
        ModelError: The folder is not a valid model folder, the Keras model
            is refused (safe mode, shapes), cannot be converted, or its
            conversion does not match it.
    """
    spec = convert_to_litert(read_model_folder(folder))
    spec_path = spec.folder / SPEC_FILE
    raw = json.loads(spec_path.read_text(encoding="utf-8"))
    raw["litert"] = spec.litert.to_json()
    _write_bytes_atomically(spec_path, (json.dumps(raw, indent=2) + "\n").encode())
    return spec.folder / spec.litert.file


def convert_to_litert(spec: ModelSpec, required: bool = True) -> ModelSpec:
    """Write ``model.tflite`` beside ``spec``'s Keras model; return ``spec`` recording it.

    ``model.json`` is the caller's to write (``annotate train`` writes it
    once the model is calibrated; :func:`export_litert` updates it).

    Args:
        spec: The model; its Keras file must be saved.
        required: False: a model that cannot be converted (or whose
            conversion does not match it) keeps no export and runs on Keras;
            a warning says why. Training uses this, so that a finished
            training is never lost to the export.

    Raises:
        ModelError: As for :func:`export_litert`, if ``required``.
    """
    target = spec.folder / LITERT_FILE
    try:
        keras_sha256 = file_sha256(spec.weights_path)
        _write_bytes_atomically(target, _converted(spec))
    except ModelError as error:
        if required:
            raise
        target.unlink(missing_ok=True)  # made from weights that are gone
        warnings.warn(f"{error}; `annotate run` will run this model on Keras", stacklevel=2)
        return dataclasses.replace(spec, litert=None)
    return dataclasses.replace(spec, litert=LiteRTExport(LITERT_FILE, keras_sha256))


def _converted(spec: ModelSpec) -> bytes:
    """The LiteRT conversion of ``spec``'s Keras model, checked against it."""
    from annotate.c_stderr import muted
    from annotate.modelling.inference import MICRO_BATCH, Classifier, LiteRTNetwork, tensorflow

    model = Classifier(spec, backend="keras").keras_model  # safe mode, shapes checked
    tf = tensorflow()
    shape = (MICRO_BATCH, *spec.input_shape)
    inputs = tf.keras.Input(batch_shape=shape)
    fixed = tf.keras.Model(inputs, model(inputs))  # the same layers and weights
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    converter.optimizations = []  # float32 weights and arithmetic: outputs match Keras
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # LiteRT alone runs it
    try:
        # The converter prints where it saved a temporary SavedModel, and notes from C++.
        with contextlib.redirect_stdout(io.StringIO()), muted():
            blob = converter.convert()
    except Exception as error:  # the converter raises many types; all mean "cannot convert"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot convert {spec.weights_path} for LiteRT: {first}") from None
    probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = np.concatenate(LiteRTNetwork(spec, blob).outputs([probe]))
    want = model(probe, training=False).numpy()
    # Relative to the logits' size once they exceed 1: a head on a backbone's
    # pooled states sees inputs in the tens, and float32 rounding grows with them.
    diff = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    if not diff <= EXPORT_TOLERANCE:
        raise ModelError(f"{spec.folder}: the LiteRT conversion differs from the Keras "
                         f"model by {diff:.2g} (at most {EXPORT_TOLERANCE:g} allowed)")
    return blob


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that it appears whole or not at all (temp, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise ModelError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
