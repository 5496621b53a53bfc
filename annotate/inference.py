"""Batched inference with Keras models (TensorFlow is imported here, lazily).

Only the main process imports this module; the joblib workers that compute
features never do.
"""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np

from annotate.errors import ModelError
from annotate.model_folder import ModelSpec

_tf = None

#: Segments per call of the compiled model. Fixed, so that every call sees
#: the same shape: a segment's probabilities then do not depend on how many
#: segments were gathered around it (``--batch-size``, ``--jobs``).
MICRO_BATCH = 32


def tensorflow():
    """Import TensorFlow once per process, quietly."""
    global _tf
    if _tf is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # TensorFlow's C++ start-up notes bypass its log level; hide them by
        # muting file descriptor 2 during the import (errors still raise).
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)

        tf.get_logger().setLevel("ERROR")
        _tf = tf
    return _tf


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64, rows summing to 1."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


class Classifier:
    """A model folder's Keras model, loaded on first use, predicting in batches."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @cached_property
    def keras_model(self):
        tf = tensorflow()
        try:
            model = tf.keras.models.load_model(
                self.spec.weights_path, compile=False, safe_mode=True
            )
        except Exception as error:  # Keras raises many types; all mean "refused"
            raise ModelError(
                f"cannot load {self.spec.weights_path} in safe mode "
                f"(custom code and Lambda layers are refused): {error}"
            ) from None
        want_in = (self.spec.features.n_frames, self.spec.features.n_mels)
        got_in = tuple(model.input_shape[1:3])
        if got_in != want_in:
            raise ModelError(
                f"{self.spec.folder}: the model takes input frames x mels {got_in}, "
                f"but model.json's feature settings give {want_in}"
            )
        n_out = model.output_shape[-1]
        if n_out != len(self.spec.labels):
            raise ModelError(
                f"{self.spec.folder}: the model has {n_out} outputs "
                f"but model.json lists {len(self.spec.labels)} labels"
            )
        return model

    @cached_property
    def _step(self):
        tf = tensorflow()
        model = self.keras_model
        shape = (None, self.spec.features.n_frames, self.spec.features.n_mels)

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], jit_compile=False)
        def step(batch):
            return model(batch, training=False)

        return step

    def load(self) -> Classifier:
        """Load and check the model now (it is otherwise loaded on first use)."""
        _ = self._step
        return self

    def logits(self, features: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Model outputs for a stack of segments.

        Segments go through a tf.data pipeline in batches of
        :data:`MICRO_BATCH`, the last padded, so that the compiled function
        sees a single shape whatever the number of segments.

        Args:
            features: np.ndarray [shape=(n, frames, n_mels), dtype=float32],
                or a list of such arrays (taken in order, never joined: a long
                recording's chunks are not copied into one array).

        Returns:
            np.ndarray [shape=(n, n_labels), dtype=float32].
        """
        arrays = [features] if isinstance(features, np.ndarray) else list(features)
        n = sum(len(a) for a in arrays)
        if n == 0:
            return np.zeros((0, len(self.spec.labels)), np.float32)
        tf = tensorflow()
        shape = (MICRO_BATCH, self.spec.features.n_frames, self.spec.features.n_mels)
        dataset = tf.data.Dataset.from_generator(
            lambda: micro_batches(arrays, MICRO_BATCH),
            output_signature=tf.TensorSpec(shape, tf.float32),
        ).prefetch(2)
        out = [self._step(batch).numpy() for batch in dataset]
        return np.concatenate(out)[:n].astype(np.float32)

    def predict(self, features: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities, shape (n, n_labels), float64, rows summing to 1."""
        return softmax(self.logits(features), self.spec.temperature)


def micro_batches(arrays: list[np.ndarray], size: int):
    """Rows of ``arrays``, in order, as float32 blocks of exactly ``size`` rows.

    The last block is padded with zeros; only blocks that straddle two arrays
    are copied together.
    """
    pending: list[np.ndarray] = []
    have = 0
    for array in arrays:
        start = 0
        while start < len(array):
            take = min(size - have, len(array) - start)
            pending.append(array[start : start + take])
            have += take
            start += take
            if have == size:
                yield np.concatenate(pending).astype(np.float32, copy=False)
                pending, have = [], 0
    if have:
        block = np.concatenate(pending).astype(np.float32, copy=False)
        yield np.pad(block, [(0, size - have)] + [(0, 0)] * (block.ndim - 1))
