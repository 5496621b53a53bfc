"""Silero VAD v6 as the run computes it: spectra and convolutions in NumPy, the LSTM in ONNX.

The published streaming export (``silero_vad_16k_sequence.onnx``) computes
each 32 ms frame's spectrum as a 256-tap convolution with 258 output
channels, then four small convolutions, then one LSTM step and a sigmoid.
Only the LSTM carries anything from one frame to the next, so everything
before it is computed for a whole block of frames at once, as one real FFT
and four matrix products; the LSTM and the output layer run as the export's
own tail on ONNX Runtime (``recurrent.onnx``). On one thread that takes 30 %
of the export's time (docs/benchmarks.md): its convolution in place of an
FFT was 36 % of it, and its small convolutions ran at a fraction of what
one matrix product over a block does. ``scripts/build_speech_detector.py`` cuts that tail and
the encoder's weights (``encoder.npz``) out of the pinned export; the export
stays in the folder as the reference the pieces are tested against
(``tests/test_speech_detection.py``: the same probabilities within 1e-4).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import scipy.fft

from annotate.errors import ModelError

#: Frames per block: 32 s of audio, bounded memory, and as fast as longer blocks.
_FRAMES_PER_BLOCK = 1024
#: The export's STFT: a periodic Hann window of 256 samples, every 128 samples.
_WINDOW = 256
_HOP = 128


class SileroVAD:
    """Silero VAD's frame probabilities, from the bundled detector folder (one thread a call).

    Args:
        folder: The detector folder: ``detector.json``, the encoder's weights,
            the recurrent tail, the published export, licence and card.

    Raises:
        ModelError: The folder is missing, or a file the run reads does not
            match its SHA-256 in ``detector.json``.
    """

    def __init__(self, folder: Path) -> None:
        try:
            self.spec = json.loads((folder / "detector.json").read_text())
            self.path = folder / self.spec["file"]
            encoder = self._checked(folder, "encoder")
            self._recurrent = self._checked(folder, "recurrent")
            self.frame_samples = int(self.spec["frame_samples"])
            self.context = int(self.spec["context_samples"])
            strides = [int(s) for s in self.spec["encoder_strides"]]
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(f"the speech detector in {folder} cannot be read ({error}); "
                             "reinstall annotate, or pass --speech-detector energy") from None
        self._layers = _encoder_layers(encoder, strides)
        n = np.arange(_WINDOW)
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * n / _WINDOW)).astype(np.float32)
        self._session = None
        self._lock = threading.Lock()

    def _checked(self, folder: Path, key: str) -> bytes:
        path = folder / self.spec[key]
        content = path.read_bytes()
        if hashlib.sha256(content).hexdigest() != self.spec[f"{key}_sha256"]:
            raise ModelError(f"{path} does not match its SHA-256 in detector.json")
        return content

    def session(self):
        """The recurrent tail's ONNX Runtime session, made on first use (one per process)."""
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                options.log_severity_level = 3
                self._session = ort.InferenceSession(self._recurrent, sess_options=options,
                                                     providers=["CPUExecutionProvider"])
            return self._session

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of each 32 ms frame of one stream [shape=(ceil(n / 512),)].

        Frame j covers samples ``[512 j, 512 j + 512)`` (the last one
        zero-padded) and hears, besides them, the 64 samples before them and
        the stream's memory of every earlier frame.
        """
        audio = np.asarray(audio, np.float32)
        n, size = len(audio), self.frame_samples
        count = -(-n // size)
        if count == 0:
            return np.zeros(0, np.float32)
        frames = np.zeros((count, size), np.float32)
        frames.reshape(-1)[:n] = audio
        rows = np.empty((count, self.context + size), np.float32)
        rows[:, self.context:] = frames
        rows[0, : self.context] = 0.0
        rows[1:, : self.context] = frames[:-1, -self.context:]
        h = np.zeros((1, 1, 128), np.float32)
        c = np.zeros((1, 1, 128), np.float32)
        session = self.session()
        out = []
        for first in range(0, count, _FRAMES_PER_BLOCK):
            features = self.encode(rows[first : first + _FRAMES_PER_BLOCK])
            p, h, c = session.run(None, {"features": features, "h": h, "c": c})
            out.append(np.asarray(p, np.float32).reshape(-1))
        return np.concatenate(out)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """The encoder's output, the LSTM's input, for rows of 576 samples [shape=(k, 1, 128)]."""
        x = spectrum(rows, self._window)
        for weight, bias, stride in self._layers:
            x = _convolve(x, weight, bias, stride)
        return x


def spectrum(rows: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The export's STFT magnitudes of each row [shape=(k, 4, 129)]: frames, then bins.

    The export pads each row by 128 samples on each side, reflecting, takes
    windows of 256 every 128 samples and drops the first: the four windows
    start at samples 0, 128, 256 and 384 of the row, the last one running
    into the reflection of the row's end.
    """
    width = rows.shape[1]
    extra = 3 * _HOP + _WINDOW - width  # reflected samples the last window needs
    tail = rows[:, width - 2 : width - 2 - extra : -1]
    padded = np.concatenate([rows, tail], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW, axis=1)[:, ::_HOP][:, :4]
    # SciPy's FFT computes in float32, NumPy's in float64: 2.3x faster here.
    return np.abs(scipy.fft.rfft(windows * window, axis=-1, workers=1, overwrite_x=True))


def _encoder_layers(content: bytes, strides: list[int]) -> list[tuple]:
    """Each convolution as a (3 C, O) matrix over [previous, this, next] frames' channels."""
    import io

    with np.load(io.BytesIO(content)) as weights:
        layers = []
        for i, stride in enumerate(strides):
            weight = weights[f"encoder.{i}.weight"]  # (O, C, 3)
            matrix = np.ascontiguousarray(weight.transpose(2, 1, 0).reshape(-1, weight.shape[0]))
            layers.append((matrix.astype(np.float32),
                           weights[f"encoder.{i}.bias"].astype(np.float32), stride))
    return layers


def _convolve(x: np.ndarray, matrix: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """A kernel-3 convolution padded by one frame, then ReLU, on (k, frames, channels)."""
    k, frames, channels = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    out = (frames - 1) // stride + 1
    taps = [padded[:, tap : tap + stride * (out - 1) + 1 : stride] for tap in range(3)]
    y = np.concatenate(taps, axis=2).reshape(k * out, 3 * channels) @ matrix
    y += bias
    return np.maximum(y, 0.0, out=y).reshape(k, out, -1)
