"""Decode recordings to 16 kHz mono float32, block by block.

A long recording is never held whole: :func:`read_span` reads only the span
a task needs, in blocks, and resamples it with a streaming soxr resampler.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from annotate.errors import InputError

#: Source samples read per block (about 20 s at 48 kHz).
BLOCK_FRAMES = 1 << 20
#: Context read on each side of a span so that the resampler's filter has
#: settled at the edges that are kept.
CONTEXT_S = 0.05


@dataclass(frozen=True)
class AudioInfo:
    """What the header says about a recording."""

    sampling_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sampling_rate


def check_regular_file(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is a readable regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"broken symbolic link: {path}", kind="missing") from None
        raise InputError(f"no such file: {path}", kind="missing") from None
    except OSError as error:  # symlink loop, permission on a parent, ...
        raise InputError(f"cannot open {path}: {error.strerror}", kind="unreadable") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"not a regular file: {path}", kind="not-a-file")
    if info.st_size == 0:
        raise InputError(f"empty file (0 bytes): {path}", kind="empty")
    if not os.access(path, os.R_OK):
        raise InputError(f"permission denied: {path}", kind="unreadable")


def probe(path: Path) -> AudioInfo:
    """Read a recording's header.

    Raises:
        InputError: The file is missing, not a regular file, empty, or not
            audio that libsndfile can decode.
    """
    check_regular_file(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise InputError(f"not a readable audio file: {path}: {error}", kind="decode") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise InputError(f"bad header (rate {info.samplerate}, {info.channels} channels)", "decode")
    return AudioInfo(info.samplerate, info.channels, max(int(info.frames), 0), info.format)


def read_span(
    path: Path, info: AudioInfo, start_s: float, end_s: float, sampling_rate: int
) -> np.ndarray:
    """Read ``[start_s, end_s)`` of a recording as mono float32 at ``sampling_rate``.

    Channels are averaged; non-finite samples (NaN/Inf in float files) are
    set to zero. Reading is block by block, so memory is bounded by the span.

    Returns:
        np.ndarray [shape=(n,), dtype=float32] with ``n`` the span's length
        in samples at ``sampling_rate`` (shorter if the file ends early).
    """
    src_rate = info.sampling_rate
    ctx = CONTEXT_S if src_rate != sampling_rate else 0.0
    first = max(0, int(math.floor((start_s - ctx) * src_rate)))
    last = int(math.ceil((end_s + ctx) * src_rate))
    pieces: list[np.ndarray] = []
    resampler = (
        soxr.ResampleStream(src_rate, sampling_rate, 1, dtype="float32", quality="HQ")
        if src_rate != sampling_rate
        else None
    )
    try:
        with sf.SoundFile(str(path)) as handle:
            if first:
                handle.seek(first)
            position = first
            while position < last:
                count = min(BLOCK_FRAMES, last - position)
                block = handle.read(count, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                position += block.shape[0]
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
                pieces.append(resampler.resample_chunk(mono) if resampler else mono)
                if block.shape[0] < count:
                    break
            if resampler is not None:
                pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise InputError(f"decoding failed in {path}: {error}", kind="decode") from None
    signal = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    offset = int(round((start_s - first / src_rate) * sampling_rate))
    want = int(round((end_s - start_s) * sampling_rate))
    return np.ascontiguousarray(signal[offset : offset + want], dtype=np.float32)
