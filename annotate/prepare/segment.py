"""Cut a recording's timeline into fixed windows; the energy gate (``--speech-detector energy``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

#: Segments computed together: the Python between numpy calls is paid once
#: per stack, so threads wait less for each other (two threads: 0.55-0.60 s
#: for the features of 30 min instead of 0.64-0.72 s); larger stacks fall out
#: of the cache (8: slower on one thread).
STACK = 4


def equal_length_runs(pieces: list[np.ndarray], indices: Iterable[int],
                      size: int = STACK) -> Iterator[list[int]]:
    """``indices`` in order, in runs of at most ``size`` pieces of equal length (to stack)."""
    group: list[int] = []
    for i in indices:
        if group and (len(group) == size or len(pieces[i]) != len(pieces[group[0]])):
            yield group
            group = []
        group.append(int(i))
    if group:
        yield group


def segment_bounds(duration_s: float, window_s: float, hop_s: float) -> np.ndarray:
    """Start and end times of the fixed windows covering a recording.

    Windows start every ``hop_s``; the last, partial window is kept, and a
    recording shorter than one window gives a single segment. No window is
    emitted once an earlier one already reaches the end.

    Returns:
        np.ndarray [shape=(n_segments, 2), dtype=float64]: ``(start_s, end_s)``.
    """
    if window_s <= 0 or hop_s <= 0:
        raise ValueError("window and hop must be positive")
    if duration_s <= 0:
        return np.zeros((0, 2))
    # Integer arithmetic in microseconds keeps boundaries exact and repeatable.
    duration_us, window_us, hop_us = (int(round(x * 1e6)) for x in (duration_s, window_s, hop_s))
    bounds = []
    start = 0
    while start < duration_us:
        end = min(start + window_us, duration_us)
        bounds.append((start / 1e6, end / 1e6))
        if end >= duration_us:
            break
        start += hop_us
    return np.asarray(bounds, dtype=np.float64)


def is_speech(
    samples: np.ndarray,
    sampling_rate: int,
    threshold_dbfs: float = -45.0,
    min_active_s: float = 0.15,
) -> bool:
    """Energy-based speech/no-speech decision for one segment.

    A segment holds speech when at least ``min_active_s`` seconds of its 25 ms
    frames are louder than ``threshold_dbfs`` and the loud frames are not all
    alike (a constant tone or DC offset has no modulation, speech has).

    Args:
        samples: np.ndarray [shape=(n,)], mono float in [-1, 1].
        sampling_rate: In Hz.
        threshold_dbfs: Frame RMS level, in dB relative to full scale.
        min_active_s: Minimum total duration of loud frames.
    """
    return bool(speech_mask(np.asarray(samples)[None], sampling_rate, threshold_dbfs,
                            min_active_s)[0])


def speech_mask(
    segments: np.ndarray,
    sampling_rate: int,
    threshold_dbfs: float = -45.0,
    min_active_s: float = 0.15,
    return_active_s: bool = False,
):
    """:func:`is_speech` of each of a stack of equally long segments.

    Args:
        segments: np.ndarray [shape=(m, n)], mono float in [-1, 1].
        sampling_rate: In Hz.
        threshold_dbfs: Frame RMS level, in dB relative to full scale.
        min_active_s: Minimum total duration of loud frames.
        return_active_s: Also return the seconds of loud frames of each segment.

    Returns:
        np.ndarray [shape=(m,), dtype=bool] (and, with ``return_active_s``,
        np.ndarray [shape=(m,), float64]).
    """
    frame = int(0.025 * sampling_rate)
    count, size = segments.shape
    if size < frame:
        empty = np.zeros(count, dtype=bool)
        return (empty, np.zeros(count)) if return_active_s else empty
    n = size // frame
    frames = segments[:, : n * frame].reshape(count, n, frame).astype(np.float64)
    frames = frames - frames.mean(axis=-1, keepdims=True)  # DC is not speech
    rms = np.sqrt(np.mean(frames**2, axis=-1))
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    active = level > threshold_dbfs
    active_s = active.sum(axis=-1) * 0.025
    loud_enough = active_s >= min_active_s
    # Speech is modulated: its frame levels spread over several dB.
    rows = zip(loud_enough, level, active, strict=True)
    mask = np.array([bool(enough and (np.std(lv[on]) > 1.0 or (~on).any()))
                     for enough, lv, on in rows], dtype=bool)
    return (mask, active_s.astype(np.float64)) if return_active_s else mask
