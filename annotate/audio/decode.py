"""Decode recordings to 16 kHz mono float32, block by block.

A long recording is never held whole: :func:`read_span` reads only the span
a task needs, in blocks, and resamples it with a streaming soxr resampler.

Every way a file can be bad ends in an :class:`InputError` whose ``kind``
goes to the failures table: a file is opened without blocking and checked
to be a regular file before libsndfile sees it (a FIFO named ``x.wav``
never hangs the run), it is opened by descriptor (names that are not valid
UTF-8 work), and a file whose audio ends well before its header says is
reported as truncated instead of being annotated with rows for audio that
is not there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr

from annotate import c_stderr
from annotate.audio.discover import printable
from annotate.errors import InputError

#: Source frames read per block (about 5 s at 48 kHz): small, so that a
#: task holds little more than its resampled span.
BLOCK_FRAMES = 1 << 18
#: Context read on each side of a span so that the resampler's filter has
#: settled at the edges that are kept.
CONTEXT_S = 0.05
#: Audio may end this much before its header says without being called
#: truncated: MP3 headers without a frame index only estimate the length.
TRUNCATION_TOLERANCE_S = 0.5
#: Lines the decoders print on the C level (mpg123 inside libsndfile) that
#: are caught and kept out of the terminal; they go into failure messages.
_DECODER_CHATTER = ("Note: ", "Warning: Xing", "[src/libmpg123/", "[libmpg123/")
#: libsndfile formats whose decoder prints there (others report errors only
#: through libsndfile's return codes).
CHATTY_FORMATS = frozenset({"MP3"})


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


def check_regular_file(path: str | Path) -> None:
    """Raise :class:`InputError` unless ``path`` names a non-empty regular file.

    Symbolic links are followed; a broken link, a link loop, a directory, a
    FIFO or a device each get their own message.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"broken symbolic link: {_show(path)} -> "
                             f"{_show(os.readlink(path))}", kind="missing") from None
        raise InputError(f"no such file: {_show(path)}", kind="missing") from None
    except ValueError as error:  # a NUL byte or lone surrogate, e.g. from a JSON manifest
        raise InputError(f"bad file name {_show(path)!r}: {error}", kind="missing") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError(f"symbolic link loop: {_show(path)}", kind="unreadable") from None
        raise InputError(f"cannot open {_show(path)}: {error.strerror}",
                         kind="unreadable") from None
    _check_mode(path, info)


def _check_mode(path: str | Path, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"a directory, not an audio file: {_show(path)}", kind="not-a-file")
    if not stat.S_ISREG(info.st_mode):
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise InputError(f"{what}, not an audio file: {_show(path)}", kind="not-a-file")
    if info.st_size == 0:
        raise InputError(f"empty file (0 bytes): {_show(path)}", kind="empty")


@contextlib.contextmanager
def open_audio(path: str | Path) -> Iterator[sf.SoundFile]:
    """Open a recording for reading with libsndfile.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` before
    libsndfile reads it, so nothing that is not a regular file is ever read
    (no hang on a FIFO, even if it replaced the file after discovery).

    Raises:
        InputError: Missing, unreadable, not a regular file, empty, or not
            in a format libsndfile recognises.
    """
    check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise InputError(f"permission denied: {_show(path)}", kind="unreadable") from None
    except OSError as error:
        raise InputError(f"cannot open {_show(path)}: {error.strerror}",
                         kind="unreadable") from None
    try:
        _check_mode(path, os.fstat(fd))
        with decoder_messages() as notes:
            try:
                handle = sf.SoundFile(fd, closefd=False)
            except (sf.LibsndfileError, RuntimeError) as error:
                handle = None
                reason = _libsndfile_reason(error)
        if handle is None:
            raise InputError(f"not a readable audio file: {_show(path)}: {reason}"
                             + _notes_suffix(notes), kind="decode")
        with handle:
            yield handle
    finally:
        os.close(fd)


def probe(path: str | Path) -> AudioInfo:
    """Read a recording's header.

    Raises:
        InputError: The file is missing, not a regular file, empty, or not
            audio that libsndfile can decode.
    """
    with open_audio(path) as handle:
        info = AudioInfo(handle.samplerate, handle.channels, max(int(handle.frames), 0),
                         handle.format)
    if info.sampling_rate <= 0 or info.channels <= 0:
        raise InputError(f"bad header in {_show(path)} (rate {info.sampling_rate}, "
                         f"{info.channels} channels)", kind="decode")
    return info


def read_span(
    path: str | Path, info: AudioInfo, start_s: float, end_s: float, sampling_rate: int
) -> np.ndarray:
    """Read ``[start_s, end_s)`` of a recording as mono float32 at ``sampling_rate``.

    Channels are averaged; non-finite samples (NaN/Inf in float files) are
    set to zero and float samples beyond full scale are clipped, as
    conversion to PCM would. Reading is block by block, so memory is bounded
    by the span.

    Returns:
        np.ndarray [shape=(n,), dtype=float32] with ``n`` the span's length
        in samples at ``sampling_rate`` (shorter only within
        :data:`TRUNCATION_TOLERANCE_S` of the end).

    Raises:
        InputError: Decoding failed, or the audio ends well before the
            header says (``kind="truncated"``).
    """
    if info.format in CHATTY_FORMATS and c_stderr.can_quiet():
        # Silenced through the C stderr stream, which threads can share, so
        # that they decode side by side; a failure is decoded again with the
        # notes caught on descriptor 2 (one thread at a time), for its message.
        try:
            return _read_span(path, info, start_s, end_s, sampling_rate, c_stderr.quiet)
        except InputError:
            pass
    if info.format in CHATTY_FORMATS:
        notes: list[str] = []
        return _read_span(path, info, start_s, end_s, sampling_rate,
                          functools.partial(decoder_messages, notes), notes)
    return _read_span(path, info, start_s, end_s, sampling_rate, contextlib.nullcontext)


def _read_span(path, info: AudioInfo, start_s: float, end_s: float, sampling_rate: int,
               decoder_call, notes: Sequence[str] = ()) -> np.ndarray:
    """:func:`read_span`, with every decoder call inside ``decoder_call()``.

    ``notes`` are the decoder's lines that ``decoder_call`` catches, for the
    message of a failure.
    """
    src_rate = info.sampling_rate
    ctx = CONTEXT_S if src_rate != sampling_rate else 0.0
    first = max(0, int(math.floor((start_s - ctx) * src_rate)))
    last = int(math.ceil((end_s + ctx) * src_rate))
    offset = int(round((start_s - first / src_rate) * sampling_rate))
    want = int(round((end_s - start_s) * sampling_rate))
    # Filled in place: no second copy of the span (a 10-minute task is 38 MB).
    signal = np.zeros(offset + want, dtype=np.float32)
    filled = 0

    def keep(piece: np.ndarray) -> None:
        nonlocal filled
        n = min(piece.shape[0], signal.shape[0] - filled)
        signal[filled : filled + n] = piece[:n]
        filled += n

    resampler = (
        soxr.ResampleStream(src_rate, sampling_rate, 1, dtype="float32", quality="HQ")
        if src_rate != sampling_rate
        else None
    )
    position = first
    with open_audio(path) as handle:
        try:
            if first:
                with decoder_call():
                    handle.seek(first)
            while position < last:
                count = min(BLOCK_FRAMES, last - position)
                with decoder_call():
                    block = handle.read(count, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                position += block.shape[0]
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                np.nan_to_num(mono, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                np.clip(mono, -1.0, 1.0, out=mono)
                keep(resampler.resample_chunk(mono) if resampler else mono)
                if block.shape[0] < count:
                    break
            if resampler is not None:
                keep(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            error = None
        except (sf.LibsndfileError, RuntimeError, OSError) as caught:
            error = caught
    if error is not None:
        raise InputError(
            f"decoding failed in {_show(path)} (corrupt or truncated file): "
            f"{_libsndfile_reason(error)}" + _notes_suffix(notes), kind="decode")
    promised = min(last, info.frames)
    if promised - position > TRUNCATION_TOLERANCE_S * src_rate:
        raise InputError(
            f"truncated or corrupt: the audio in {_show(path)} ends at "
            f"{position / src_rate:.2f} s but its header says {info.duration_s:.2f} s"
            + _notes_suffix(notes), kind="truncated")
    return signal[offset:filled]


@contextlib.contextmanager
def decoder_messages(notes: list[str] | None = None) -> Iterator[list[str]]:
    """Catch what C decoders print to file descriptor 2 while the block runs.

    mpg123 (inside libsndfile) prints notes such as ``Note: Illegal
    Audio-MPEG-Header ...`` straight to the process's stderr on corrupt
    MP3s. They are caught here and handed to the caller (for the failures
    table) instead of breaking up the progress display; anything else
    written to descriptor 2 meanwhile (another thread) is passed on.

    Args:
        notes: Where the lines go (default: a new list).

    Yields:
        ``notes``, to which the decoder lines caught are added when the block ends.
    """
    notes = [] if notes is None else notes
    with c_stderr.exclusive():
        try:
            sys.stderr.flush()
            sink = tempfile.TemporaryFile()  # not a pipe: it cannot fill up and block
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # /tmp full, no descriptor 2, ...
            yield notes  # decode anyway; the notes then reach stderr
            return
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield notes
            finally:
                os.dup2(saved, 2)
                _sort_caught(sink, notes)
        finally:
            os.close(saved)
            sink.close()


def _sort_caught(sink, notes: list[str]) -> None:
    """Keep the decoder's lines in ``notes``, pass anything else on to stderr."""
    try:
        sink.seek(0)
        caught = sink.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return
    other = []
    for line in caught.splitlines(keepends=True):
        if line.startswith(_DECODER_CHATTER):
            notes.append(line.strip())
        else:
            other.append(line)
    if other:
        with contextlib.suppress(OSError):
            os.write(2, "".join(other).encode())


def _notes_suffix(notes: list[str]) -> str:
    interesting = [n for n in notes if "Illegal" in n or "error" in n.lower()] or notes
    return f" [decoder: {'; '.join(interesting[:2])}]" if interesting else ""


def _libsndfile_reason(error: Exception) -> str:
    reason = getattr(error, "error_string", None) or str(error)
    if "possibly a pipe" in reason or "not a regular file" in reason:
        # libsndfile's words for a regular file it cannot make sense of.
        return "Format not recognised"
    return reason.removeprefix("Error : ").strip().rstrip(".")


def _show(path: str | Path) -> str:
    return printable(os.fspath(path))
