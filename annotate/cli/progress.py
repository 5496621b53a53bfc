"""Progress for the command line: a rich bar on a terminal, plain lines otherwise.

The events are those of :class:`annotate.pipeline.progress.Progress`.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from annotate.pipeline.progress import Progress, QuietProgress


class BarProgress(Progress):
    """A rich progress bar: recordings, audio hours, rate and ETA."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = RichProgress(
            TextColumn("[bold]annotating"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[hours]:.2f} h audio"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.audio_s = 0.0
        self.started = time.monotonic()
        self.task = None

    def start(self, total_recordings: int, already_done: int) -> None:
        self.started = time.monotonic()
        self.bar.start()
        self.task = self.bar.add_task("run", total=total_recordings, completed=already_done,
                                      hours=0.0, rate="")
        if already_done:
            self.console.print(f"resuming: {already_done} recordings already done")

    def advance(self, recordings: int, audio_s: float) -> None:
        self.audio_s += audio_s
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.bar.update(self.task, advance=recordings, hours=self.audio_s / 3600,
                        rate=f"{self.audio_s / elapsed:.0f}x real time")

    def message(self, text: str) -> None:
        self.console.print(escape(text), highlight=False, soft_wrap=True)

    def stop(self) -> None:
        self.bar.stop()


class LineProgress(Progress):
    """Plain lines, at most every few seconds, for logs and pipes."""

    def __init__(self, console: Console, every_s: float = 5.0) -> None:
        self.console = console
        self.every_s = every_s
        self.total = self.done = 0
        self.audio_s = 0.0
        self.started = self.last = time.monotonic()

    def start(self, total_recordings: int, already_done: int) -> None:
        self.total, self.done = total_recordings, already_done
        self.started = self.last = time.monotonic()
        self.console.print(f"annotating {total_recordings} recordings"
                           + (f" ({already_done} already done)" if already_done else ""))

    def advance(self, recordings: int, audio_s: float) -> None:
        self.done += recordings
        self.audio_s += audio_s
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.audio_s / max(now - self.started, 1e-6)
            self.console.print(f"{self.done}/{self.total} recordings, "
                               f"{self.audio_s / 3600:.2f} h audio, {rate:.0f}x real time",
                               highlight=False)

    def message(self, text: str) -> None:
        self.console.print(escape(text), highlight=False, soft_wrap=True)


def make_progress(console: Console, quiet: bool) -> Progress:
    """The progress reporter that fits the console."""
    if quiet:
        return QuietProgress()
    return BarProgress(console) if console.is_terminal else LineProgress(console)
