"""Data augmentation for training: audio perturbations and SpecAugment masks.

Pure numpy (plus soxr for resampling): the joblib workers that build each
epoch's features import this module, never TensorFlow. Every random choice
comes from the ``np.random.Generator`` passed in, so the same generator
state gives the same output.

The audio perturbations imitate what separates a user's recordings from an
acted studio corpus: background noise, level, speaking rate and voice pitch,
telephone channels and room reverberation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import soxr

#: Telephone pass band, in Hz (ITU-T G.712 narrowband).
TELEPHONE_BAND_HZ = (300.0, 3400.0)
#: Sampling rate of the telephone round trip, in Hz.
TELEPHONE_RATE = 8000
#: Exponents of the noise colours: power spectral density ~ 1 / f**exponent.
NOISE_COLOURS: dict[str, float] = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@dataclass(frozen=True)
class AugmentSettings:
    """How often and how strongly each augmentation is applied.

    Probabilities are per crop and per epoch; ranges are drawn uniformly.
    The defaults are mild: on EmoDB (310 training crops) stronger settings
    (every perturbation at about twice these probabilities, SNR from 5 dB)
    slowed learning more than they helped within 30 epochs.

    Attributes:
        p_speed: Probability of a speed (tempo and pitch) change.
        speed_range: Speed factors; 1.1 plays 10 % faster and higher.
        p_reverb: Probability of synthetic room reverberation.
        rt60_range_s: Reverberation times (60 dB decay), in seconds.
        p_telephone: Probability of the telephone channel (300-3400 Hz, 8 kHz).
        p_noise: Probability of additive noise.
        snr_range_db: Signal-to-noise ratios, in dB.
        gain_range_db: Level change applied to every crop, in dB.
        time_masks: SpecAugment masks over time per crop.
        max_time_mask_fraction: Longest time mask, as a fraction of the frames.
        freq_masks: SpecAugment masks over mel bands per crop.
        max_freq_mask_fraction: Widest band mask, as a fraction of the mel bands.
    """

    p_speed: float = 0.3
    speed_range: tuple[float, float] = (0.95, 1.05)
    p_reverb: float = 0.2
    rt60_range_s: tuple[float, float] = (0.15, 0.6)
    p_telephone: float = 0.1
    p_noise: float = 0.3
    snr_range_db: tuple[float, float] = (10.0, 40.0)
    gain_range_db: tuple[float, float] = (-6.0, 6.0)
    time_masks: int = 1
    max_time_mask_fraction: float = 0.1
    freq_masks: int = 1
    max_freq_mask_fraction: float = 0.125

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


def add_noise(
    samples: np.ndarray,
    rng: np.random.Generator,
    snr_db: float,
    colour: str = "white",
) -> np.ndarray:
    """Add coloured Gaussian noise at a given signal-to-noise ratio.

    Args:
        samples: np.ndarray [shape=(n,)], mono float.
        rng: Source of the noise.
        snr_db: Signal power over noise power, in dB (over the whole crop).
        colour: One of ``white``, ``pink``, ``brown`` (see :data:`NOISE_COLOURS`).

    Returns:
        np.ndarray [shape=(n,), dtype=float32].
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0:
        return samples.copy()
    noise = coloured_noise(samples.size, rng, colour)
    signal_power = float(np.mean(samples.astype(np.float64) ** 2))
    if signal_power <= 0.0:
        return samples.copy()
    noise_power = float(np.mean(noise**2)) or 1.0
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (samples + scale * noise).astype(np.float32)


def coloured_noise(n: int, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    """Gaussian noise whose power spectral density falls as ``1 / f**exponent``.

    Returns:
        np.ndarray [shape=(n,), dtype=float64], unit variance.
    """
    if colour not in NOISE_COLOURS:
        known = ", ".join(NOISE_COLOURS)
        raise ValueError(f"bad noise colour {colour!r}, expected one of [{known}]")
    white = rng.standard_normal(n)
    exponent = NOISE_COLOURS[colour]
    if exponent == 0.0 or n < 2:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0  # no infinite DC gain
    shaped = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n=n)
    return shaped / (shaped.std() + 1e-12)


def change_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by ``gain_db`` and clip to [-1, 1] as a fixed-point recording would.

    Returns:
        np.ndarray [shape=(n,), dtype=float32].
    """
    scaled = np.asarray(samples, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def change_speed(samples: np.ndarray, factor: float, sampling_rate: int) -> np.ndarray:
    """Play faster (``factor`` > 1) or slower, shifting pitch with tempo.

    The signal is treated as if sampled at ``factor * sampling_rate`` and
    resampled to ``sampling_rate`` (Kaldi-style speed perturbation).

    Returns:
        np.ndarray [shape=(round(n / factor),), dtype=float32]: the length
        changes with the speed; :func:`annotate.features.segment_features`
        fits it to the model's frames.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if samples.size == 0 or factor == 1.0:
        return samples.copy()
    return soxr.resample(samples, sampling_rate * factor, sampling_rate, quality="HQ").astype(
        np.float32
    )


def telephone(samples: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Pass a signal through a narrowband telephone channel.

    Down to 8 kHz, band-limited to 300-3400 Hz, and back to ``sampling_rate``.

    Returns:
        np.ndarray [shape=(n,), dtype=float32], the input's length.
    """
    samples = np.asarray(samples, dtype=np.float32)
    n = samples.size
    if n == 0:
        return samples.copy()
    narrow = soxr.resample(samples, sampling_rate, TELEPHONE_RATE, quality="HQ")
    if narrow.size > 1:
        spectrum = np.fft.rfft(narrow.astype(np.float64))
        freqs = np.fft.rfftfreq(narrow.size, d=1.0 / TELEPHONE_RATE)
        low, high = TELEPHONE_BAND_HZ
        spectrum[(freqs < low) | (freqs > high)] = 0.0
        narrow = np.fft.irfft(spectrum, n=narrow.size).astype(np.float32)
    wide = soxr.resample(narrow, TELEPHONE_RATE, sampling_rate, quality="HQ")
    return _fit_length(wide, n)


def room_impulse_response(
    rt60_s: float, sampling_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """A synthetic room impulse response: a direct path, then decaying noise.

    The tail is Gaussian noise under an exponential envelope that falls by
    60 dB in ``rt60_s`` seconds, starting after a short pre-delay.

    Returns:
        np.ndarray [shape=(n_taps,), dtype=float64], ``n_taps`` about
        ``rt60_s * sampling_rate``; tap 0 is the direct sound (1.0).
    """
    n_taps = max(int(rt60_s * sampling_rate), 2)
    t = np.arange(n_taps) / sampling_rate
    envelope = np.exp(-6.908 * t / rt60_s)  # ln(1000) = 6.908: -60 dB at rt60
    tail = rng.standard_normal(n_taps) * envelope
    predelay = min(int(0.005 * sampling_rate), n_taps - 1)
    tail[: predelay + 1] = 0.0
    # Reverberant energy comparable to the direct sound (a mid-sized room).
    tail *= 0.5 / np.sqrt(np.sum(tail**2) + 1e-12)
    tail[0] = 1.0
    return tail


def reverberate(
    samples: np.ndarray, rt60_s: float, sampling_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Convolve with a synthetic room impulse response, keeping length and RMS.

    Returns:
        np.ndarray [shape=(n,), dtype=float32].
    """
    samples = np.asarray(samples, dtype=np.float32)
    n = samples.size
    if n == 0:
        return samples.copy()
    response = room_impulse_response(rt60_s, sampling_rate, rng)
    size = 1 << int(np.ceil(np.log2(n + response.size - 1)))
    wet = np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(response, size), size)[:n]
    before = np.sqrt(np.mean(samples.astype(np.float64) ** 2))
    after = np.sqrt(np.mean(wet**2))
    if after > 0:
        wet *= before / after
    return np.clip(wet, -1.0, 1.0).astype(np.float32)


def augment_audio(
    samples: np.ndarray,
    rng: np.random.Generator,
    sampling_rate: int,
    settings: AugmentSettings = AugmentSettings(),
) -> np.ndarray:
    """Apply a random chain of perturbations to one crop.

    Order: speed, reverberation, telephone channel, noise, gain (the noise
    is added after the channel, as in a noisy room at the receiving end).

    Args:
        samples: np.ndarray [shape=(n,)], mono float in [-1, 1].
        rng: Every random choice comes from here.
        sampling_rate: Of ``samples``, in Hz.
        settings: Probabilities and ranges.

    Returns:
        np.ndarray [shape=(m,), dtype=float32]; ``m == n`` unless the speed changed.
    """
    # Draw every number, applied or not, so that one choice does not shift the others.
    draws = rng.random(4)
    speed = rng.uniform(*settings.speed_range)
    rt60_s = rng.uniform(*settings.rt60_range_s)
    snr_db = rng.uniform(*settings.snr_range_db)
    colour = list(NOISE_COLOURS)[int(rng.integers(len(NOISE_COLOURS)))]
    gain_db = rng.uniform(*settings.gain_range_db)
    out = np.asarray(samples, dtype=np.float32)
    if draws[0] < settings.p_speed:
        out = change_speed(out, speed, sampling_rate)
    if draws[1] < settings.p_reverb:
        out = reverberate(out, rt60_s, sampling_rate, rng)
    if draws[2] < settings.p_telephone:
        out = telephone(out, sampling_rate)
    if draws[3] < settings.p_noise:
        out = add_noise(out, rng, snr_db, colour)
    return change_gain(out, gain_db)


def spec_augment(
    features: np.ndarray,
    rng: np.random.Generator,
    settings: AugmentSettings = AugmentSettings(),
    fill: float = 0.0,
) -> np.ndarray:
    """SpecAugment time and frequency masks (Park et al., 2019), no time warping.

    Args:
        features: np.ndarray [shape=(frames, n_mels)], one normalised segment.
        rng: Every random choice comes from here.
        settings: Number and size of the masks.
        fill: Value of masked cells; 0 is each band's mean after the
            segment normalisation.

    Returns:
        np.ndarray [shape=(frames, n_mels), dtype=float32], a masked copy.
    """
    out = np.array(features, dtype=np.float32, copy=True)
    n_frames, n_mels = out.shape
    max_t = int(settings.max_time_mask_fraction * n_frames)
    max_f = int(settings.max_freq_mask_fraction * n_mels)
    for _ in range(settings.time_masks):
        width = int(rng.integers(0, max_t + 1))
        start = int(rng.integers(0, n_frames - width + 1))
        out[start : start + width, :] = fill
    for _ in range(settings.freq_masks):
        width = int(rng.integers(0, max_f + 1))
        start = int(rng.integers(0, n_mels - width + 1))
        out[:, start : start + width] = fill
    return out


def _fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    if samples.size >= n:
        return np.ascontiguousarray(samples[:n], dtype=np.float32)
    return np.pad(samples, (0, n - samples.size)).astype(np.float32)
