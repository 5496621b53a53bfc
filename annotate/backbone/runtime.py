"""The backbone at run time: pooled encoder features for stacks of speech segments.

One pass per speech segment feeds every head. Segments go through the
encoder one at a time (:data:`annotate.backbone.export.BATCH`, or the batch
an older export records), each padded with masked zero frames to the
longest segment the run can have: every call sees one shape, and a
segment's features depend on that segment alone.

On LiteRT the backbone runs in lanes: one interpreter per core, each on
one thread, taking every other block of segments. A 3 s segment's matrix
products are too small for two threads to share one of them well: measured
here, 15.0 ms a segment with two single-threaded lanes against 22.4 ms with
one interpreter on two threads. Each block is computed alone either way, so
the features are the same bits whatever the number of lanes.

Two backends give the same features to within the export's quantisation:
``litert`` (the folder's ``model.tflite``) and ``keras`` (the encoder built
from ``encoder.npz``; TensorFlow imported lazily, here).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from annotate.backbone.export import BATCH
from annotate.modelling.backbone_folder import BackboneSpec
from annotate.errors import ModelError


class Backbone:
    """A backbone folder's encoder, loaded on first use.

    Args:
        spec: The backbone.
        layers: The hidden states the heads read (0: after the convolutions
            and positions; i: after block i).
        backend: ``"litert"`` or ``"keras"``.
        n_frames: Log-mel frames of the longest segment (the run's window).
    """

    def __init__(self, spec: BackboneSpec, layers: tuple[int, ...], backend: str,
                 n_frames: int) -> None:
        if not layers or min(layers) < 0 or max(layers) > spec.n_layers:
            raise ModelError(f"{spec.folder}: hidden states {list(layers)} asked for, "
                             f"expected 0..{spec.n_layers}")
        self.spec = spec
        self.layers = tuple(sorted(set(layers)))
        self.backend = backend
        self.n_frames = int(n_frames)
        self._lock = threading.Lock()
        self._lanes: list | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.batch = spec.litert.batch if backend == "litert" and spec.litert else BATCH

    def load(self) -> Backbone:
        """Load the encoder now (a broken folder fails before any work)."""
        if self._lanes is None:
            if self.backend == "litert":
                from annotate.modelling.inference import LITERT_THREADS

                count = max(1, min(LITERT_THREADS, os.cpu_count() or 1))
                self._lanes = [self._litert() for _ in range(count)]
            else:
                self._lanes = [self._keras()]
            if len(self._lanes) > 1:
                self._pool = ThreadPoolExecutor(len(self._lanes),
                                                thread_name_prefix="annotate-backbone")
        return self

    def _litert(self):
        from annotate.modelling.inference import _litert
        from annotate.audio.c_stderr import muted

        interpreter_class, problem = _litert()
        problem = problem or self.spec.litert_problem(self.layers)
        if problem:
            raise ModelError(f"{self.spec.folder}: the LiteRT backend cannot run it: {problem}")
        path = self.spec.folder / self.spec.litert.file
        try:
            interpreter = interpreter_class(model_path=str(path), num_threads=1)
            inputs = {len(d["shape"]): d for d in interpreter.get_input_details()}
            interpreter.resize_tensor_input(inputs[3]["index"],
                                            [self.batch, self.n_frames, self.spec.features.n_mels])
            interpreter.resize_tensor_input(inputs[2]["index"], [self.batch, self.n_frames])
            with muted():
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError, KeyError) as error:
            raise ModelError(f"cannot load {path}: {error}") from None
        output = interpreter.get_output_details()[0]["index"]
        keep = list(self.layers)

        def run(log_mel: np.ndarray, valid: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(inputs[3]["index"], log_mel)
            interpreter.set_tensor(inputs[2]["index"], valid)
            interpreter.invoke()
            return interpreter.get_tensor(output)[:, keep]

        return run

    def _keras(self):
        from annotate.backbone.whisper_encoder import build_encoder
        from annotate.modelling.inference import tensorflow

        tf = tensorflow()
        model = build_encoder(self.spec.load_weights(), n_layers=max(max(self.layers), 1),
                              pooled_layers=self.layers)
        mels = self.spec.features.n_mels
        shapes = [tf.TensorSpec((BATCH, self.n_frames, mels), tf.float32),
                  tf.TensorSpec((BATCH, self.n_frames), tf.float32)]

        @tf.function(input_signature=shapes, jit_compile=False)
        def step(log_mel, valid):
            return model([log_mel, valid], training=False)

        return lambda log_mel, valid: step(log_mel, valid).numpy()

    def pooled(self, stacks: list[np.ndarray], frames: np.ndarray) -> np.ndarray:
        """Pooled hidden states of every segment.

        Args:
            stacks: Log-mel stacks [shape=(n_i, frames_i, n_mels)] (zero-padded
                past each segment's end), taken in order; a stack spilled to
                disk is read when its turn comes, one at a time.
            frames: np.ndarray [shape=(sum n_i,)]: each segment's real frame count.

        Returns:
            np.ndarray [shape=(n, len(layers), 2 * width), dtype=float32].
        """
        self.load()
        n = int(sum(len(s) for s in stacks))
        if n != len(frames):
            raise ValueError(f"{n} segments but {len(frames)} frame counts")
        out = np.zeros((n, len(self.layers), self.spec.pooled_width), np.float32)
        batch, mels = self.batch, self.spec.features.n_mels
        # Rows in order, each with its place in ``out``; a stack spilled to disk
        # (annotate.audio.spill) is read when its turn comes.
        rows = ((array, i) for stack in stacks for array in (np.asarray(stack),)
                for i in range(len(array)))
        taking = threading.Lock()
        taken = [0]
        abandoned = threading.Event()  # the caller left (Ctrl-C, an error): lanes stop

        def lane(run) -> None:
            # Each lane takes the next block of rows until none is left.
            block = np.zeros((batch, self.n_frames, mels), np.float32)
            valid = np.zeros((batch, self.n_frames), np.float32)
            while True:
                with taking:
                    start = taken[0]
                    count = min(batch, n - start)
                    if count <= 0 or abandoned.is_set():
                        return
                    block[:] = 0.0
                    valid[:] = 0.0
                    valid[:, 0] = 1.0  # an empty row pools one zero frame, not 0/0
                    for j in range(count):
                        array, i = next(rows)
                        real = min(int(frames[start + j]), self.n_frames, array.shape[1])
                        block[j, :real] = array[i, :real]
                        valid[j, :real] = 1.0
                    taken[0] = start + count
                out[start : start + count] = run(block, valid)[:count]

        with self._lock:
            if self._pool is None or n <= batch:
                lane(self._lanes[0])
            else:
                jobs = [self._pool.submit(lane, run) for run in self._lanes]
                try:
                    for job in jobs:
                        job.result()
                finally:
                    abandoned.set()
        return out
