"""Where C libraries print: descriptor 2, and the C library's ``stderr`` stream.

Both belong to the process, not to a thread. Two ways to keep a C
library's lines out of the terminal share this module:

- *exclusive* (:func:`exclusive`): descriptor 2 is pointed elsewhere, to
  catch a decoder's notes for a failure message
  (:func:`annotate.audio.decode.decoder_messages`) or to mute LiteRT's start-up
  line (:func:`muted`). One thread at a time: two threads interleaving
  their ``dup2`` calls would restore each other's redirection, and the rest
  of the run's messages would go to a deleted file.
- *quiet* (:func:`quiet`): the C ``stderr`` stream, which mpg123 prints its
  notes through, is swapped for ``/dev/null``. Python writes to descriptor
  2 directly, so the progress display is untouched, and any number of
  threads may decode MP3 side by side. Only where the C library's
  ``stderr`` variable can be found (glibc, musl, macOS): :func:`can_quiet`.

An exclusive section waits for quiet ones to finish and keeps new ones out,
so that what it catches on descriptor 2 is complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Iterator

#: Held by an exclusive section, and for a moment by a quiet one starting.
LOCK = threading.RLock()
_quiet_changed = threading.Condition()
_quiet_threads = 0


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Descriptor 2 and the C ``stderr`` stream as the process has them, for this thread alone."""
    with LOCK:
        with _quiet_changed:
            _quiet_changed.wait_for(lambda: _quiet_threads == 0)
        yield


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Mute descriptor 2: C++ start-up notes bypass Python's logging (errors still raise)."""
    with exclusive():
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _stream_and_sink() -> tuple[ctypes.c_void_p, int, int] | None:
    """The C library's ``stderr`` variable, its value, and a ``/dev/null`` stream (never closed).

    Looked up once, under :data:`LOCK`, before any swap can have happened.
    """
    global _swap
    with LOCK:
        if _swap is _NOT_LOOKED_UP:
            _swap = _look_up()
        return _swap


def _look_up() -> tuple[ctypes.c_void_p, int, int] | None:
    try:
        libc = ctypes.CDLL(None)
        for name in ("stderr", "__stderrp"):  # glibc and musl; macOS
            with contextlib.suppress(ValueError):
                variable = ctypes.c_void_p.in_dll(libc, name)
                break
        else:
            return None
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        sink = libc.fopen(os.devnull.encode(), b"w")
    except (OSError, AttributeError):
        return None
    if not sink or not variable.value:
        return None
    return variable, variable.value, sink


_NOT_LOOKED_UP = object()
_swap = _NOT_LOOKED_UP


def can_quiet() -> bool:
    """Whether :func:`quiet` can swap the C ``stderr`` stream on this platform."""
    return _stream_and_sink() is not None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Drop what C libraries print through the C ``stderr`` stream while the block runs.

    Threads may be quiet together; the stream is swapped back when the last
    one leaves. Call only where :func:`can_quiet` is true.
    """
    global _quiet_threads
    variable, original, sink = _stream_and_sink()
    with LOCK, _quiet_changed:  # LOCK: not while an exclusive section runs or waits
        if _quiet_threads == 0:
            variable.value = sink
        _quiet_threads += 1
    try:
        yield
    finally:
        with _quiet_changed:
            _quiet_threads -= 1
            if _quiet_threads == 0:
                variable.value = original
                _quiet_changed.notify_all()
