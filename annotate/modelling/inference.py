"""Batched inference: a model folder's network applied to stacks of segment features.

Two backends run the same network and give the same logits (to about 1e-6):

- ``litert``: the folder's ``model.tflite`` (written by
  :mod:`annotate.modelling.litert_export`) on Google's LiteRT interpreter, which imports
  in 0.2 s. ``annotate run`` uses it for every model whose export is current,
  and then never imports TensorFlow.
- ``keras``: ``model.keras`` in safe mode through a ``tf.function`` fed by
  tf.data; TensorFlow (5 s to import) is imported lazily, here. It is the
  reference that training and the export use, and the fallback when a folder
  has no current export or LiteRT does not import.

:func:`choose_backend` picks one per model (``$ANNOTATE_BACKEND`` or
``annotate run --backend`` can force either). Feature worker processes never
import this module.
"""

from __future__ import annotations

import os
import threading
from functools import cache, cached_property

import numpy as np

from annotate.c_stderr import muted
from annotate.errors import ModelError, UsageError, expected_one_of
from annotate.modelling.model_folder import ModelSpec
from annotate.modelling.posteriors import softmax

_tf = None

#: Segments per call of the compiled model: one. A segment's probabilities
#: then depend on nothing but the segment: not on how many were gathered
#: around it (``--batch-size``, ``--jobs``), nor on which recordings share a
#: flush or a cluster shard. With blocks of 32, XNNPACK's kernels computed a
#: row differently by its place in the block, and a cluster run's shards
#: differed from the local run in the last bit of some probabilities.
MICRO_BATCH = 1

#: What ``backend`` may ask for; ``auto`` takes LiteRT where it can.
BACKENDS = ("auto", "keras", "litert")
#: Environment variable holding the default backend request.
BACKEND_ENV = "ANNOTATE_BACKEND"

#: LiteRT interpreter threads (capped at the cores). Measured through
#: `annotate run` with the two feature threads beside it on a 2-core machine,
#: interleaved: 2 h of WAV in 3.76-3.93 s with 2 threads against 4.21-4.30 s
#: with 1, 30 min in 1.60-1.69 s against 1.76-1.78 s, at the same CPU time.
#: The logits are the same bits either way.
LITERT_THREADS = 2


def tensorflow():
    """Import TensorFlow once per process, quietly."""
    global _tf
    if _tf is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with muted():
            import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        _tf = tf
    return _tf


@cache
def _litert() -> tuple[type | None, str | None]:
    """LiteRT's ``Interpreter`` class and None, or None and why it does not import."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        return None, f"ai_edge_litert does not import ({error}); pip install ai-edge-litert"
    return Interpreter, None


def choose_backend(spec: ModelSpec, requested: str | None = None) -> str:
    """The backend that runs ``spec``'s network: ``"litert"`` or ``"keras"``.

    Args:
        spec: The model.
        requested: ``"auto"`` (LiteRT when the folder's export is current and
            LiteRT imports, else Keras), ``"litert"`` or ``"keras"``; None
            reads ``$ANNOTATE_BACKEND`` (default ``auto``).

    Raises:
        UsageError: ``requested`` is not a backend.
        ModelError: LiteRT was asked for but cannot run this model (says why).
    """
    return _pick(requested, lambda: spec.litert_problem() or _block_problem(spec),
                 lambda problem: f"{spec.folder}: the LiteRT backend cannot run this model: "
                 f"{problem}. Export it with scripts/export_litert.py, or use the keras backend")


def _block_problem(spec: ModelSpec) -> str | None:
    """Why the export's fixed batch is not :data:`MICRO_BATCH`, or None.

    Exports before one-segment blocks fixed the batch at 32; LiteRT cannot
    resize such a graph, and blocks of 32 would make a segment's
    probabilities depend on its neighbours. Such a folder runs on Keras.
    """
    interpreter_class, problem = _litert()
    if problem:
        return None  # _pick reports LiteRT itself
    path = spec.folder / spec.litert.file
    try:
        batch = int(interpreter_class(model_path=str(path)).get_input_details()[0]
                    ["shape_signature"][0])
    except (ValueError, RuntimeError, IndexError):
        return None  # a broken export is refused when it loads (LiteRTNetwork)
    if batch not in (-1, MICRO_BATCH):
        return (f"{spec.litert.file} was exported for blocks of {batch} segments, "
                f"and runs {MICRO_BATCH} at a time now")
    return None


def _pick(requested: str | None, litert_problem, refusal) -> str:
    """``requested`` (None: ``$ANNOTATE_BACKEND``) resolved to ``litert`` or ``keras``.

    Args:
        requested: ``auto``, ``litert``, ``keras`` or None.
        litert_problem: Says why LiteRT cannot run the model, or None.
        refusal: Gives the ModelError's message, from the problem, when
            LiteRT was asked for and cannot run the model.
    """
    what = "backend"
    if requested is None:
        requested, what = os.environ.get(BACKEND_ENV) or "auto", BACKEND_ENV
    if requested not in BACKENDS:
        raise UsageError(expected_one_of(what, requested, BACKENDS))
    if requested == "keras":
        return "keras"
    problem = litert_problem() or _litert()[1]
    if problem is None:
        return "litert"
    if requested == "litert":
        raise ModelError(refusal(problem))
    return "keras"


def choose_backbone_backend(spec, layers: tuple[int, ...], requested: str | None = None,
                            language: bool = False) -> str:
    """The backend that runs a backbone (:class:`~annotate.modelling.backbone_folder.BackboneSpec`).

    As :func:`choose_backend`: LiteRT when the folder's export is current and
    gives the hidden states ``layers`` (and, with ``language``, Whisper's
    language identification), else Keras (built from the folder's weights).
    """
    def problem():
        return spec.litert_problem(layers) or (spec.language_problem() if language else None)

    return _pick(requested, problem,
                 lambda problem: f"{spec.folder}: the LiteRT backend cannot run this backbone: "
                 f"{problem}. Use the keras backend")


class Classifier:
    """A model folder's network, loaded on first use, predicting in batches.

    Args:
        spec: The model.
        backend: ``"auto"``, ``"litert"`` or ``"keras"`` (see
            :func:`choose_backend`; None reads ``$ANNOTATE_BACKEND``).
    """

    def __init__(self, spec: ModelSpec, backend: str | None = None) -> None:
        self.spec = spec
        self._requested = backend

    @cached_property
    def backend(self) -> str:
        """The backend, chosen on first use: ``litert`` or ``keras`` (:func:`choose_backend`)."""
        return choose_backend(self.spec, self._requested)

    @cached_property
    def keras_model(self):
        """The Keras model (whatever the backend: training reads its layers)."""
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
        check_network_shapes(self.spec, tuple(model.input_shape[1:]), model.output_shape[-1])
        return model

    @cached_property
    def _step(self):
        tf = tensorflow()
        model = self.keras_model
        shape = (None, *self.spec.input_shape)

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], jit_compile=False)
        def step(batch):
            return model(batch, training=False)

        return step

    @cached_property
    def _litert(self) -> LiteRTNetwork:
        return LiteRTNetwork(self.spec)

    def load(self) -> Classifier:
        """Load and check the model now (it is otherwise loaded on first use)."""
        _ = self._litert if self.backend == "litert" else self._step
        return self

    def logits(self, features: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Model outputs for a stack of segments.

        Segments go through the network in blocks of :data:`MICRO_BATCH`, the
        last padded, so that it sees a single shape whatever the number of
        segments (on Keras through a tf.data pipeline).

        Args:
            features: np.ndarray [shape=(n, *spec.input_shape), dtype=float32]
                (log-mel frames, or a head's pooled backbone features),
                or a list of such arrays (taken in order, never joined: a long
                recording's chunks are not copied into one array).

        Returns:
            np.ndarray [shape=(n, n_labels), dtype=float32].
        """
        arrays = [features] if isinstance(features, np.ndarray) else list(features)
        n = sum(len(a) for a in arrays)
        if n == 0:
            return np.zeros((0, len(self.spec.labels)), np.float32)
        if self.backend == "litert":
            out = self._litert.outputs(arrays)
        else:
            out = self._keras_outputs(arrays)
        return np.concatenate(out)[:n].astype(np.float32)

    def _keras_outputs(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        tf = tensorflow()
        shape = (MICRO_BATCH, *self.spec.input_shape)
        dataset = tf.data.Dataset.from_generator(
            lambda: micro_batches(arrays, MICRO_BATCH),
            output_signature=tf.TensorSpec(shape, tf.float32),
        ).prefetch(2)
        return [self._step(batch).numpy() for batch in dataset]

    def predict(self, features: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities, shape (n, n_labels), float64, rows summing to 1."""
        return softmax(self.logits(features), self.spec.temperature)


class LiteRTNetwork:
    """A folder's ``model.tflite`` on the LiteRT interpreter, sized once for MICRO_BATCH segments.

    ``content``, when given, is a conversion to run instead of the folder's file.
    A ``.tflite`` file holds only built-in operations, so it runs no custom
    code; the export made it from a Keras model that loaded in safe mode.
    One interpreter serves every caller, one block at a time (it is not
    thread-safe; Dask and Streamlit call from several threads).

    Raises:
        ModelError: The file does not load, or its shapes do not fit ``model.json``.
    """

    def __init__(self, spec: ModelSpec, content: bytes | None = None) -> None:
        interpreter_class, problem = _litert()
        if problem:
            raise ModelError(problem)
        threads = min(LITERT_THREADS, os.cpu_count() or 1)
        path = spec.folder / (spec.litert.file if content is None else "(conversion)")
        try:
            if content is None:
                interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            else:
                interpreter = interpreter_class(model_content=content, num_threads=threads)
        except ValueError as error:
            raise ModelError(f"cannot load {path}: {error}") from None
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs, "
                             "expected one of each")
        if inputs[0]["dtype"] != np.float32 or outputs[0]["dtype"] != np.float32:
            raise ModelError(f"{path} is not a float32 model (quantised?); export it again")
        check_network_shapes(spec, tuple(inputs[0]["shape_signature"][1:]),
                             int(outputs[0]["shape_signature"][-1]))
        try:
            interpreter.resize_tensor_input(
                inputs[0]["index"], [MICRO_BATCH, *spec.input_shape])
            with muted():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"cannot prepare {path}: {error}") from None
        self._interpreter = interpreter
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]
        self._lock = threading.Lock()

    def outputs(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Logits per block of :data:`MICRO_BATCH` rows of ``arrays`` (the last padded)."""
        out = []
        with self._lock:
            for block in micro_batches(arrays, MICRO_BATCH):
                self._interpreter.set_tensor(self._input, block)
                self._interpreter.invoke()
                out.append(self._interpreter.get_tensor(self._output))
        return out


def check_network_shapes(spec: ModelSpec, frames_mels: tuple, n_outputs: int) -> None:
    """Check a network's input shape (one segment's) and output count against ``model.json``.

    Raises:
        ModelError: Naming the network's shape and what ``model.json`` implies.
    """
    want_in = spec.input_shape
    what, source = (("features", "backbone settings") if spec.backbone
                    else ("frames x mels", "feature settings"))
    got_in = tuple(int(x) if x is not None else None for x in frames_mels)
    if got_in != want_in:
        raise ModelError(
            f"{spec.folder}: the model takes input {what} {got_in}, "
            f"but model.json's {source} give {want_in}"
        )
    if n_outputs != len(spec.labels):
        raise ModelError(
            f"{spec.folder}: the model has {n_outputs} outputs "
            f"but model.json lists {len(spec.labels)} labels"
        )


def micro_batches(arrays: list[np.ndarray], size: int):
    """Rows of ``arrays``, in order, as float32 blocks of exactly ``size`` rows.

    The last block is padded with zeros; only blocks that straddle two arrays
    are copied together. An item that is not an array yet (features spilled
    to disk, :class:`annotate.pipeline.spill.SpilledFeatures`) is read when its turn
    comes, so that only one is in memory at a time.
    """
    pending: list[np.ndarray] = []
    have = 0
    for item in arrays:
        array = np.asarray(item)
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
