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
from the folder's weights; TensorFlow imported lazily, here).

With ``language=True`` each segment also goes on through the encoder's
remaining blocks and Whisper's language identification (``language.tflite``
on LiteRT), in the same lane, from the frames the first blocks gave: one
encoder pass still feeds every head. A caller may ask for it only where it
is needed (``needs_language``: the cascade, where the language head is
unsure): the lane decides on each block's pooled states as soon as the
encoder gives them, so no frames are kept.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from annotate.backbone.export import BATCH
from annotate.errors import ModelError
from annotate.modelling.backbone_folder import BackboneSpec


class Backbone:
    """A backbone folder's encoder, loaded on first use.

    Args:
        spec: The backbone.
        layers: The hidden states the heads read (0: after the convolutions
            and positions; i: after block i).
        backend: ``"litert"`` or ``"keras"``.
        n_frames: Log-mel frames of the longest segment (the run's window).
        language: Also give Whisper's language logits (:meth:`encode`).
        share_language: On LiteRT, one language interpreter for all lanes, each
            taking it in turn, instead of one per lane: for a caller that asks
            for the language step on a few segments (the cascade). It holds
            the step's 27 M weights unpacked, about 280 MiB a copy.
    """

    def __init__(self, spec: BackboneSpec, layers: tuple[int, ...], backend: str,
                 n_frames: int, language: bool = False, share_language: bool = False) -> None:
        if not layers or min(layers) < 0 or max(layers) > spec.n_layers:
            raise ModelError(f"{spec.folder}: hidden states {list(layers)} asked for, "
                             f"expected 0..{spec.n_layers}")
        self.spec = spec
        self.layers = tuple(sorted(set(layers)))
        self.backend = backend
        self.n_frames = int(n_frames)
        self.language = bool(language)
        self.share_language = bool(share_language)
        self._lock = threading.Lock()
        self._context_lock = threading.Lock()
        self._context: tuple | None = None  # (frames, step) of context_language
        self._lanes: list | None = None
        # LiteRT: the lanes' encoder interpreters, and the language step's, shared
        # or one a lane (the context step borrows them rather than hold its own).
        self._encoders: list = []
        self._shared_language = None
        self._lane_languages: list = []
        self._pool: ThreadPoolExecutor | None = None
        self.batch = spec.litert.batch if backend == "litert" and spec.litert else BATCH

    def load(self) -> Backbone:
        """Load the encoder now (a broken folder fails before any work)."""
        if self._lanes is None:
            if self.backend == "litert":
                from annotate.modelling.inference import LITERT_THREADS

                count = max(1, min(LITERT_THREADS, os.cpu_count() or 1))
                shared = self._language_step() if self.language and self.share_language else None
                self._lanes = [self._litert(shared) for _ in range(count)]
            else:
                self._lanes = [self._keras()]
            if len(self._lanes) > 1:
                self._pool = ThreadPoolExecutor(len(self._lanes),
                                                thread_name_prefix="annotate-backbone")
        return self

    def _interpreter_class(self, language: bool | None = None):
        from annotate.modelling.inference import _litert

        interpreter_class, problem = _litert()
        problem = problem or self.spec.litert_problem(self.layers)
        if not problem and (self.language if language is None else language):
            problem = self.spec.language_problem()
        if problem:
            raise ModelError(f"{self.spec.folder}: the LiteRT backend cannot run it: {problem}")
        return interpreter_class

    def _language_step(self):
        """``language.tflite`` as a function of the block-4 frames and the valid mask.

        Safe to call from several lanes: they take the interpreter in turn.
        """
        interpreter = self._interpreter(self._interpreter_class(), self.spec.language.file,
                                        [self.batch, (self.n_frames + 1) // 2, self.spec.width])
        inputs = _inputs_by_rank(interpreter)
        logits = interpreter.get_output_details()[0]["index"]
        turn = threading.Lock()
        if self.share_language:
            self._shared_language = interpreter
        else:
            self._lane_languages.append(interpreter)

        def step(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
            with turn:
                interpreter.set_tensor(inputs[3], frames)
                interpreter.set_tensor(inputs[2], valid)
                interpreter.invoke()
                return interpreter.get_tensor(logits)

        return step

    def _litert(self, language=None):
        """One lane: its own encoder, and the language step (its own unless ``language``)."""
        interpreter_class = self._interpreter_class()
        width = self.spec.width
        encoder = self._interpreter(interpreter_class, self.spec.litert.file,
                                    [self.batch, self.n_frames, self.spec.features.n_mels])
        self._encoders.append(encoder)
        outputs = {d["shape_signature"][-1]: d["index"] for d in encoder.get_output_details()}
        if 2 * width not in outputs or (self.language and width not in outputs):
            raise ModelError(f"{self.spec.folder / self.spec.litert.file} lacks the outputs "
                             "this version reads; rebuild it (scripts/build_backbone.py)")
        keep = list(self.layers)
        encoder_inputs = _inputs_by_rank(encoder)
        if self.language and language is None:
            language = self._language_step()

        def run(log_mel: np.ndarray, valid: np.ndarray, count: int, wanted):
            # Pooled states of the block; language logits (or None) and which
            # of its first ``count`` rows asked for them.
            encoder.set_tensor(encoder_inputs[3], log_mel)
            encoder.set_tensor(encoder_inputs[2], valid)
            encoder.invoke()
            pooled = encoder.get_tensor(outputs[2 * width])[:, keep]
            if language is None:
                return pooled, None, None
            asked = wanted(pooled[:count])
            if not asked.any():
                return pooled, None, asked
            return pooled, language(encoder.get_tensor(outputs[width]), valid), asked

        return run

    def _interpreter(self, interpreter_class, file: str, shape3: list[int],
                     n_frames: int | None = None, threads: int = 1):
        """An interpreter of ``file``, its rank-3 input resized to ``shape3``.

        Its valid mask is ``n_frames`` log-mel frames long (default: the run's
        window); it runs on ``threads`` threads (the lanes: one each).
        """
        from annotate.c_stderr import muted

        path = self.spec.folder / file
        try:
            interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            inputs = _inputs_by_rank(interpreter)
            interpreter.resize_tensor_input(inputs[3], shape3)
            interpreter.resize_tensor_input(inputs[2], [self.batch, n_frames or self.n_frames])
            with muted():
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError, KeyError) as error:
            raise ModelError(f"cannot load {path}: {error}") from None
        return interpreter

    def _keras(self):
        step = self._keras_step(self.language)

        def run(log_mel, valid, count: int, wanted):
            pooled, logits = step(log_mel, valid)
            pooled = pooled.numpy()
            if not self.language:
                return pooled, None, None
            asked = wanted(pooled[:count])
            return pooled, logits.numpy() if asked.any() else None, asked

        return run

    def _keras_step(self, language: bool, n_frames: int | None = None):
        """The Keras encoder (and Whisper's language path) as one compiled function.

        It maps log-mel [shape=(BATCH, n_frames, n_mels)] and the valid mask
        to the pooled states and the language logits (empty without ``language``).
        """
        from annotate.backbone.published import backbone_weights
        from annotate.backbone.whisper_encoder import build_encoder
        from annotate.modelling.inference import tensorflow

        tf = tensorflow()
        variables = backbone_weights(self.spec, "" if language else "encoder/")
        weights = {k: v for k, v in variables.items() if k.startswith("encoder/")}
        blocks = max(max(self.layers), 1)
        model = build_encoder(weights, n_layers=blocks, pooled_layers=self.layers,
                              with_frames=True)
        path = None
        if language:
            from annotate.backbone.whisper_language import build_language_path

            decoder = {k: v for k, v in variables.items() if k.startswith("decoder/")}
            path = build_language_path(weights, decoder, blocks)
        mels, n_frames = self.spec.features.n_mels, n_frames or self.n_frames
        shapes = [tf.TensorSpec((BATCH, n_frames, mels), tf.float32),
                  tf.TensorSpec((BATCH, n_frames), tf.float32)]

        @tf.function(input_signature=shapes, jit_compile=False)
        def step(log_mel, valid):
            pooled, frames = model([log_mel, valid], training=False)
            if path is None:
                return pooled, tf.zeros((BATCH, 0))
            return pooled, path([frames, valid], training=False)

        return step

    def context_language(self, window: np.ndarray) -> np.ndarray:
        """Whisper's language logits for one window [shape=(99,)] (:meth:`context_languages`)."""
        return self.context_languages([window])[0]

    def context_languages(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Whisper's language logits for whole windows, every frame real.

        The recording-level question of a run's language source
        (:meth:`annotate.modelling.language_source.LanguageSource.context_units`):
        Whisper's language step as Whisper itself asks it, on 30 s of padded
        log-mel (:func:`annotate.features.whisper_context`), not on one masked
        segment. Its encoder and language step are loaded on the first call
        (about 1 s a window on one core) and kept. Where the run's lanes lend
        their interpreters (LiteRT, the language step shared), the windows are
        spread over the lanes' encoders and take the language step in turn;
        each window is computed alone, so its logits are the same bits
        whatever the number of lanes or windows.

        Args:
            windows: Each np.ndarray [shape=(frames, n_mels)], all as long.

        Returns:
            np.ndarray [shape=(len(windows), 99), dtype=float32].
        """
        windows = [np.asarray(w, np.float32) for w in windows]
        if not windows:
            from annotate.labels import WHISPER_LANGUAGES

            return np.zeros((0, len(WHISPER_LANGUAGES)), np.float32)
        n_frames = len(windows[0])
        if any(len(w) != n_frames for w in windows):
            raise ValueError("context windows of different lengths")
        with self._context_lock:
            if self._context is None or self._context[0] != n_frames:
                self._context = (n_frames, self._context_step(n_frames))
            return np.stack(self._context[1](windows))

    def _context_step(self, n_frames: int):
        """A function from windows [each shape=(n_frames, n_mels)] to their language logits."""
        mels = self.spec.features.n_mels
        block = np.zeros((self.batch, n_frames, mels), np.float32)
        valid = np.ones((self.batch, n_frames), np.float32)
        if self.backend == "litert":
            self.load()
            if self._encoders and (self._shared_language is not None or self._lane_languages):
                return self._borrowed_context_step(n_frames)
            from annotate.modelling.inference import LITERT_THREADS

            # One window at a time, while the lanes wait: a 30 s window's
            # products are large enough for every core to share.
            threads = max(1, min(LITERT_THREADS, os.cpu_count() or 1))
            interpreter_class = self._interpreter_class(True)
            encoder = self._interpreter(interpreter_class, self.spec.litert.file,
                                        [self.batch, n_frames, mels], n_frames, threads)
            language = self._interpreter(interpreter_class, self.spec.language.file,
                                         [self.batch, (n_frames + 1) // 2, self.spec.width],
                                         n_frames, threads)
            step = _window_step(encoder, language, self.spec.width, block, valid)
            return lambda windows: [step(w) for w in windows]
        keras_step = self._keras_step(True, n_frames)

        def step(window: np.ndarray) -> np.ndarray:
            block[0] = window
            return keras_step(block, valid)[1].numpy()[0]

        return lambda windows: [step(w) for w in windows]

    def _borrowed_context_step(self, n_frames: int):
        """The context step on the lanes' encoders and language steps.

        While the lanes are idle (``encode`` holds the same lock while they
        run), the interpreters are resized for the window, run, and resized
        back: their weights are not held twice (a second pair held about
        630 MB more). Each lane's encoder takes the next window, and one
        language step (the shared one, or the first lane's where each lane
        has its own: ``--language-id whisper``) takes one window at a time:
        on two cores a window costs 0.6 of its time alone
        (docs/benchmarks.md). An interpreter resized for a window keeps its
        larger arena for the rest of the run (on Whisper base about 170 MB
        for the language step, 100 MB for an encoder), so only one language
        step is: each lane's own pair would hold 160 MB more for 5 % less
        time on the context step's corpora.
        """
        mels, width = self.spec.features.n_mels, self.spec.width
        language = (self._shared_language if self._shared_language is not None
                    else self._lane_languages[0])
        turn = threading.Lock()
        steps = [_window_step(encoder, language, width,
                              np.zeros((self.batch, n_frames, mels), np.float32),
                              np.ones((self.batch, n_frames), np.float32), turn)
                 for encoder in self._encoders]

        def sized(lanes: int, frames: int) -> list[tuple]:
            # The interpreters a call uses, each with its input shape for ``frames``.
            return ([(language, [self.batch, (frames + 1) // 2, width])]
                    + [(e, [self.batch, frames, mels]) for e in self._encoders[:lanes]])

        def borrowed(windows: list[np.ndarray]) -> list[np.ndarray]:
            lanes = min(len(steps), len(windows))
            out: list = [None] * len(windows)
            order = iter(range(len(windows)))
            taking = threading.Lock()
            abandoned = threading.Event()

            def lane(step) -> None:
                while not abandoned.is_set():
                    with taking:
                        i = next(order, None)
                    if i is None:
                        return
                    try:
                        out[i] = step(windows[i])
                    except BaseException:
                        abandoned.set()
                        raise

            with self._lock:
                resized = 0
                try:
                    for interpreter, shape in sized(lanes, n_frames):
                        _resize(interpreter, shape, n_frames)
                        resized += 1
                    self._on_lanes(lane, steps[:lanes], abandoned)
                finally:
                    for interpreter, shape in sized(lanes, self.n_frames)[:resized]:
                        _resize(interpreter, shape, self.n_frames)
            return out

        return borrowed

    def pooled(self, stacks: list[np.ndarray], frames: np.ndarray) -> np.ndarray:
        """Pooled hidden states of every segment (:meth:`encode` without the language)."""
        return self.encode(stacks, frames)[0]

    def encode(self, stacks: list[np.ndarray], frames: np.ndarray,
               needs_language: Callable[[np.ndarray, int], np.ndarray] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Pooled hidden states of every segment, and Whisper's language logits if asked for.

        Args:
            stacks: Log-mel stacks [shape=(n_i, frames_i, n_mels)] (zero-padded
                past each segment's end), taken in order; a stack spilled to
                disk is read when its turn comes, one at a time.
            frames: np.ndarray [shape=(sum n_i,)]: each segment's real frame count.
            needs_language: With ``language``, which segments need Whisper's
                language logits, from their pooled states [shape=(k,
                len(layers), 2 * width)] and the index of the first of them
                among all segments (a boolean array [shape=(k,)]); the
                others skip the language step. Called from the lanes'
                threads, one block at a time. None: every segment.

        Returns:
            Pooled states: np.ndarray [shape=(n, len(layers), 2 * width), dtype=float32];
            language logits: np.ndarray [shape=(n, 99), dtype=float32], NaN
            for the segments ``needs_language`` spared, or None without ``language``.
        """
        self.load()
        n = int(sum(len(s) for s in stacks))
        if n != len(frames):
            raise ValueError(f"{n} segments but {len(frames)} frame counts")
        out = np.zeros((n, len(self.layers), self.spec.pooled_width), np.float32)
        logits = None
        if self.language:
            from annotate.labels import WHISPER_LANGUAGES

            logits = np.full((n, len(WHISPER_LANGUAGES)), np.nan, np.float32)
        batch, mels = self.batch, self.spec.features.n_mels
        # Rows in order, each with its place in ``out``; a stack spilled to disk
        # (annotate.pipeline.spill) is read when its turn comes.
        rows = ((array, i) for stack in stacks for array in (np.asarray(stack),)
                for i in range(len(array)))
        taking = threading.Lock()
        taken = [0]

        def wanted(pooled: np.ndarray, first: int) -> np.ndarray:
            if needs_language is None:
                return np.ones(len(pooled), bool)
            return np.asarray(needs_language(pooled, first), bool).reshape(len(pooled))

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
                pooled, language, asked = run(block, valid, count,
                                              lambda states, first=start: wanted(states, first))
                out[start : start + count] = pooled[:count]
                if language is not None:
                    logits[start : start + count][asked] = language[:count][asked]

        with self._lock:
            self._on_lanes(lane, self._lanes if n > batch else self._lanes[:1], abandoned)
        return out, logits

    def _on_lanes(self, lane: Callable, runs: list, abandoned: threading.Event) -> None:
        """``lane(run)`` for each of ``runs`` on the lanes' threads (the caller's for one).

        Waits for every lane; ``abandoned`` is set when they are done or one
        failed, so that the others stop taking work.
        """
        if self._pool is None or len(runs) == 1:
            lane(runs[0])
            return
        jobs = [self._pool.submit(lane, run) for run in runs]
        try:
            for job in jobs:
                job.result()
        finally:
            abandoned.set()


def _window_step(encoder, language, width: int, block: np.ndarray, valid: np.ndarray,
                 turn: threading.Lock | None = None):
    """A window [shape=(frames, n_mels)] through ``encoder`` then ``language``: its logits.

    ``turn``: held around the language step, where several encoders share it.
    """
    frames_out = next(d["index"] for d in encoder.get_output_details()
                      if d["shape_signature"][-1] == width)
    encoder_in, language_in = _inputs_by_rank(encoder), _inputs_by_rank(language)
    logits_out = language.get_output_details()[0]["index"]
    turn = turn or contextlib.nullcontext()

    def step(window: np.ndarray) -> np.ndarray:
        block[0] = window
        encoder.set_tensor(encoder_in[3], block)
        encoder.set_tensor(encoder_in[2], valid)
        encoder.invoke()
        frames = encoder.get_tensor(frames_out)
        with turn:
            language.set_tensor(language_in[3], frames)
            language.set_tensor(language_in[2], valid)
            language.invoke()
            return language.get_tensor(logits_out)[0]

    return step


def _resize(interpreter, shape3: list[int], n_frames: int) -> None:
    """Resize an interpreter's inputs (rank 3 and its valid mask) and allocate again."""
    from annotate.c_stderr import muted

    inputs = _inputs_by_rank(interpreter)
    interpreter.resize_tensor_input(inputs[3], shape3)
    interpreter.resize_tensor_input(inputs[2], [shape3[0], n_frames])
    with muted():
        interpreter.allocate_tensors()


def _inputs_by_rank(interpreter) -> dict[int, int]:
    """An interpreter's input indices by rank: 3 (features or frames) and 2 (valid)."""
    return {len(d["shape_signature"]): d["index"] for d in interpreter.get_input_details()}
