"""How a run reports its progress: events a reporter receives.

The run (local or on a cluster) calls these; the command line's reporters
(:mod:`annotate.cli.progress`) draw them as a bar or as lines.
"""

from __future__ import annotations


class Progress:
    """Receives progress events; the default reports nothing (the CLI draws bars)."""

    def start(self, total_recordings: int, already_done: int) -> None: ...

    def advance(self, recordings: int, audio_s: float) -> None: ...

    def message(self, text: str) -> None: ...

    def stop(self) -> None: ...


class QuietProgress(Progress):
    """Reports nothing."""
