"""What a run returns, and what it does with an output already complete.

Shared by the local run (:mod:`annotate.pipeline.local`) and the cluster run
(:mod:`annotate.pipeline.cluster`), so that neither imports the other's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from annotate.audio.discover import Failure
from annotate.errors import UsageError
from annotate.pipeline.progress import Progress


@dataclass
class RunResult:
    """What a run did."""

    output: Path
    failures_output: Path
    recordings: int = 0
    annotated: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    audio_s: float = 0.0
    already_complete: bool = False

    @property
    def failed(self) -> int:
        return len(self.failures)


def is_already_complete(output, previous: str | None, fingerprint: str, overwrite: bool,
                        progress: Progress) -> bool:
    """Decide what to do with a finished output found where a run would write.

    Returns True when it was made with the same settings and models (nothing
    to do); False when ``overwrite`` allows redoing it.

    Raises:
        UsageError: It was made with other settings and ``overwrite`` is off.
    """
    if previous == fingerprint and not overwrite:
        progress.message(f"{output} is already complete with these settings; nothing to do")
        return True
    if not overwrite:
        raise UsageError(f"{output} exists (made with other settings); pass --overwrite")
    return False
