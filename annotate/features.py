"""Log-mel features: a pure function of (samples, sampling rate, settings).

No I/O, no printing and no TensorFlow here: the joblib workers import this
module, and training and inference share it so that they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class FeatureParams:
    """Everything inference must reproduce to feed a model what it was trained on.

    Attributes:
        sampling_rate: Rate the audio is resampled to, in Hz.
        segment_s: Length of the model's input window in seconds; shorter
            segments are padded (see :func:`fit_frames`).
        window_s: STFT window length in seconds.
        hop_s: STFT hop in seconds.
        n_fft: FFT size in samples (>= window length).
        n_mels: Number of mel bands.
        fmin_hz: Lowest mel band edge.
        fmax_hz: Highest mel band edge.
        normalisation: ``"segment"`` subtracts each band's mean over the
            segment and divides by the segment's overall standard deviation
            (cepstral mean/variance normalisation: it removes the channel's
            fixed colouring, one of the cues that betray a corpus);
            ``"none"``; or ``"whisper"``: OpenAI Whisper's input, the log10
            of mel power clamped to 8 below the segment's maximum and scaled
            as ``(x + 4) / 4``, one frame per hop (the centred STFT's last
            frame dropped), and segments shorter than ``segment_s`` padded
            with zeros at the end, which the encoder masks.
    """

    sampling_rate: int = 16000
    segment_s: float = 3.0
    window_s: float = 0.025
    hop_s: float = 0.010
    n_fft: int = 512
    n_mels: int = 64
    fmin_hz: float = 60.0
    fmax_hz: float = 7800.0
    normalisation: str = "segment"

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_s * self.sampling_rate))

    @property
    def win_length(self) -> int:
        return int(round(self.window_s * self.sampling_rate))

    @property
    def n_frames(self) -> int:
        """Frames in one full segment: the model's fixed input length."""
        return self.frames_of(int(round(self.segment_s * self.sampling_rate)))

    def frames_of(self, n_samples):
        """Frames :func:`log_mel` gives for ``n_samples`` samples (an int or an array)."""
        if self.normalisation == "whisper":
            return n_samples // self.hop_length
        return 1 + n_samples // self.hop_length

    def segment_frames(self, durations_s) -> np.ndarray:
        """Frames of segments ``durations_s`` seconds long, at most :attr:`n_frames` each.

        What a backbone encodes of each segment: its real length, up to the window.
        """
        samples = np.rint(np.asarray(durations_s, np.float64) * self.sampling_rate)
        return np.minimum(self.frames_of(samples.astype(np.int64)), self.n_frames)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FeatureParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown feature settings {sorted(unknown)}, expected {sorted(known)}")
        return cls(**values)


@functools.lru_cache(maxsize=8)
def _mel_basis(params: FeatureParams) -> np.ndarray:
    """Slaney-style mel filterbank, area-normalised: ``librosa.filters.mel``'s default.

    Written out here (and tested equal to librosa's) because importing
    ``librosa.filters`` costs every feature worker 1-4 s at start-up.

    Returns:
        np.ndarray [shape=(n_mels, 1 + n_fft // 2), dtype=float32].
    """
    freqs = np.fft.rfftfreq(params.n_fft, 1.0 / params.sampling_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(params.fmin_hz), _hz_to_mel(params.fmax_hz),
                                   params.n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, freqs)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # float32 before scaling, in librosa's order, so that the two are equal bit for bit.
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


#: The Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_MEL_HZ_PER_MEL = 200.0 / 3
_MEL_BREAK_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _MEL_HZ_PER_MEL
    log_part = np.log(np.maximum(hz, 1e-10) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    above = _MEL_BREAK_HZ / _MEL_HZ_PER_MEL + log_part
    return np.where(hz >= _MEL_BREAK_HZ, above, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    break_mel = _MEL_BREAK_HZ / _MEL_HZ_PER_MEL
    above = _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (mel - break_mel))
    return np.where(mel >= break_mel, above, mel * _MEL_HZ_PER_MEL)


@functools.lru_cache(maxsize=8)
def _window(params: FeatureParams) -> np.ndarray:
    window = np.hanning(params.win_length + 1)[:-1].astype(np.float32)
    padded = np.zeros(params.n_fft, dtype=np.float32)
    offset = (params.n_fft - params.win_length) // 2
    padded[offset : offset + params.win_length] = window
    return padded


def log_mel(samples: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Log-mel spectrogram of a mono signal at ``params.sampling_rate``.

    Frames are centred (the signal is reflect-padded by ``n_fft // 2``), so
    a segment of ``segment_s`` seconds gives exactly ``params.n_frames`` frames.

    Args:
        samples: np.ndarray [shape=(n_samples,)], float, mono.
        params: The feature settings.

    Returns:
        np.ndarray [shape=(frames, n_mels), dtype=float32]: natural log of
        mel power (floored at 1e-10), not yet normalised.
    """
    return _mel_of_power(power_spectrum(samples, params), params)


#: OpenAI Whisper's input: 80 mel bands of 25 ms frames every 10 ms, up to 8 kHz.
WHISPER_FEATURES = FeatureParams(
    sampling_rate=16000, segment_s=3.0, window_s=0.025, hop_s=0.010, n_fft=400, n_mels=80,
    fmin_hz=0.0, fmax_hz=8000.0, normalisation="whisper",
)


def whisper_log_mel(samples: np.ndarray, params: FeatureParams = WHISPER_FEATURES) -> np.ndarray:
    """Whisper's log-mel input for one signal at its real length (no padding).

    Equal (to about 1e-5) to faster-whisper's ``FeatureExtractor`` with
    ``padding=0`` and to OpenAI's ``log_mel_spectrogram`` on the same samples.

    Args:
        samples: np.ndarray [shape=(n_samples,)], mono at ``params.sampling_rate``.
        params: Settings with ``normalisation="whisper"``.

    Returns:
        np.ndarray [shape=(n_samples // hop, n_mels), dtype=float32].
    """
    return normalise(log_mel(samples, params), params)


def power_spectrum(samples: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Power of the centred STFT frames: the part of :func:`log_mel` before the mel bands.

    Args:
        samples: np.ndarray [shape=(..., n_samples)]: one signal, or a stack
            of equally long ones, each padded and framed on its own.
        params: The feature settings.

    Returns:
        np.ndarray [shape=(..., frames, 1 + n_fft // 2), dtype=float32].
    """
    samples = np.asarray(samples, dtype=np.float32)
    half = params.n_fft // 2
    if samples.shape[-1] == 0:
        samples = np.zeros((*samples.shape[:-1], 1), dtype=np.float32)
    mode = "reflect" if samples.shape[-1] > half else "constant"
    padded = np.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(half, half)], mode=mode)
    n_frames = 1 + (padded.shape[-1] - params.n_fft) // params.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.n_fft, axis=-1)
    frames = frames[..., : n_frames * params.hop_length : params.hop_length, :] * _window(params)
    # scipy's FFT keeps float32 and is 2-4x faster than numpy's here; it
    # transforms each frame on its own, so a stack gives every signal its own bits.
    spectrum = scipy.fft.rfft(frames, n=params.n_fft, axis=-1)
    return spectrum.real**2 + spectrum.imag**2


def _mel_of_power(power: np.ndarray, params: FeatureParams) -> np.ndarray:
    if params.normalisation == "whisper":
        power = power[..., :-1, :]  # Whisper drops the centred STFT's last frame
    mel = power @ _mel_basis(params).T
    return np.log(np.maximum(mel, 1e-10)).astype(np.float32)


#: Whisper's dynamic range: log10 mel power is clamped to this far below its maximum.
WHISPER_DYNAMIC_RANGE = 8.0


def normalise(features: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Apply the model's normalisation to each segment's log-mel frames.

    Args:
        features: np.ndarray [shape=(..., frames, n_mels)]: one segment or a stack.
        params: The feature settings (``normalisation`` picks the method).

    Returns:
        np.ndarray [shape=(..., frames, n_mels), dtype=float32].
    """
    if params.normalisation == "none":
        return features.astype(np.float32)
    if params.normalisation == "whisper":
        if features.shape[-2] == 0:
            return features.astype(np.float32)
        log10 = features * np.float32(1.0 / np.log(10.0))
        floor = log10.max(axis=(-2, -1), keepdims=True) - WHISPER_DYNAMIC_RANGE
        return ((np.maximum(log10, floor) + 4.0) / 4.0).astype(np.float32)
    if params.normalisation == "segment":
        centred = features - features.mean(axis=-2, keepdims=True)
        scale = centred.std(axis=(-2, -1), keepdims=True)
        return (centred / (scale + 1e-5)).astype(np.float32)
    raise ValueError(
        f"bad normalisation {params.normalisation!r}, expected one of [none, segment, whisper]"
    )


#: Whisper's own context: 30 s of log-mel frames.
WHISPER_CONTEXT_FRAMES = 3000


def whisper_context(segments: list[np.ndarray], n_frames: int = WHISPER_CONTEXT_FRAMES
                    ) -> np.ndarray:
    """Whisper's padded 30 s input for speech segments joined end to end.

    The segments' frames, each normalised against its own maximum
    (:func:`normalise`), are normalised again against the maximum of them
    all, as Whisper normalises one window: exact, since a frame clamped
    below its segment's maximum minus the range lies below the joint
    maximum minus the range too. What is left of the window is Whisper's
    padding (silence: the floor), and frames past it are dropped.

    Args:
        segments: Each segment's normalised frames at its real length
            [shape=(frames_i, n_mels)].
        n_frames: The window's length.

    Returns:
        np.ndarray [shape=(n_frames, n_mels), dtype=float32].
    """
    joined = np.concatenate([np.asarray(s, np.float32) for s in segments])[:n_frames]
    log10 = 4.0 * joined - 4.0  # undo (x + 4) / 4
    floor = log10.max() - WHISPER_DYNAMIC_RANGE if len(log10) else -10.0
    window = np.full((n_frames, joined.shape[1]), floor, np.float32)
    window[: len(log10)] = np.maximum(log10, floor)
    return ((window + 4.0) / 4.0).astype(np.float32)


def fit_frames(features: np.ndarray, n_frames: int, pad: str = "repeat") -> np.ndarray:
    """Pad or cut frames to the model's fixed length.

    Repeating rather than zero-padding keeps a short clip's statistics
    those of speech, not of an artificial silence; a Whisper encoder
    instead masks the frames past the end, which are zeros here.

    Args:
        features: np.ndarray [shape=(..., frames, n_mels)]: one segment or a stack.
        n_frames: The length wanted.
        pad: ``"repeat"`` (repeat the segment) or ``"zeros"``.
    """
    have = features.shape[-2]
    if have == n_frames:
        return features
    if have > n_frames:
        return features[..., :n_frames, :]
    if pad == "zeros":
        widths = [(0, 0)] * (features.ndim - 2) + [(0, n_frames - have), (0, 0)]
        return np.pad(features, widths)
    reps = -(-n_frames // max(have, 1))
    return np.tile(features, (reps, 1))[..., :n_frames, :]


def segment_features(samples: np.ndarray, params: FeatureParams) -> np.ndarray:
    """The model input for one segment: log-mel, normalised, fitted to length.

    Training computes this for every crop; ``annotate run`` computes the
    same for stacks of segments (:func:`features_of_segments`).

    Args:
        samples: np.ndarray [shape=(n_samples,)], mono at ``params.sampling_rate``.
        params: The feature settings.

    Returns:
        np.ndarray [shape=(params.n_frames, params.n_mels), dtype=float32].
    """
    return features_of_segments(np.asarray(samples)[None], (params,))[0][0]


def _stft_key(params: FeatureParams) -> tuple:
    return (params.sampling_rate, params.n_fft, params.hop_length, params.win_length)


def features_of_segments(
    segments: np.ndarray, params: tuple[FeatureParams, ...]
) -> list[np.ndarray]:
    """:func:`segment_features` of a stack of equally long segments, for several models' settings.

    Models that differ only in their mel bands (a band-limited language
    model beside full-band emotion models) share one STFT, and a stack
    pays the Python between numpy calls once for all its segments. Each
    segment gets the bits it would get alone.

    Args:
        segments: np.ndarray [shape=(n, n_samples)], mono at the settings' rate.
        params: The settings of each model.

    Returns:
        One array per setting, [shape=(n, p.n_frames, p.n_mels), dtype=float32].
    """
    powers: dict[tuple, np.ndarray] = {}
    out = []
    for p in params:
        key = _stft_key(p)
        if key not in powers:
            powers[key] = power_spectrum(segments, p)
        pad = "zeros" if p.normalisation == "whisper" else "repeat"
        out.append(fit_frames(normalise(_mel_of_power(powers[key], p), p), p.n_frames, pad))
    return out
