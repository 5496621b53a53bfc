"""File descriptor 2, where C libraries print: one lock for everyone who points it elsewhere.

The descriptor belongs to the process, not to a thread. A feature thread
catching a decoder's notes (:func:`annotate.decode.decoder_messages`) and
the main thread muting LiteRT's start-up line (:func:`muted`) would
otherwise interleave their ``dup2`` calls, and restore each other's
redirection: the rest of the run's messages would then go to a deleted
file. Whoever redirects it holds :data:`LOCK`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

#: Held while descriptor 2 points anywhere but the process's stderr.
LOCK = threading.RLock()


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Mute descriptor 2: C++ start-up notes bypass Python's logging (errors still raise)."""
    with LOCK:
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
