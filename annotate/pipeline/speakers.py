"""Who speaks each recording, and the segments table's emotions relative to each speaker.

``annotate run --speakers folder`` takes a recording's folder (its key's
parent: ``Actor_01/03-01-05-01-01-01-01.wav`` is ``Actor_01``; a recording at
the top of its input has none); ``--speakers manifest`` takes a manifest's
``speaker`` column (a Common Voice TSV's ``client_id``). The table is adapted
when it is written (:func:`annotate.pipeline.store.final_table`), from the
rows alone: local and cluster runs give the same table, and a resumed run
adapts over every recording, not only those it annotated this time. The
method is :mod:`annotate.modelling.posteriors`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from annotate.audio.discover import Recording
from annotate.errors import UsageError, expected_one_of
from annotate.modelling.posteriors import MIN_SPEECH_S, PRIOR_S, adapt_to_speakers
from annotate.pipeline.emotion_table import EmotionColumns

#: Where ``--speakers`` takes each recording's speaker from.
SPEAKER_SOURCES = ("folder", "manifest")


def speakers_of(recordings: list[Recording], source: str) -> dict[str, str | None]:
    """Each recording's speaker by key, from ``source`` (one of :data:`SPEAKER_SOURCES`).

    Raises:
        UsageError: An unknown source, or no recording with a speaker.
    """
    if source not in SPEAKER_SOURCES:
        raise UsageError(expected_one_of("speaker source", source, SPEAKER_SOURCES))
    if source == "folder":
        found = {r.key: (r.key.rpartition("/")[0] or None) for r in recordings}
    else:
        found = {r.key: r.speaker for r in recordings}
    if recordings and not any(found.values()):
        where = ("no recording is in a folder below its input" if source == "folder"
                 else "no manifest gives a 'speaker' column (or Common Voice's 'client_id')")
        raise UsageError(f"--speakers {source}: {where}")
    return found


@dataclass(frozen=True)
class Speakers:
    """What a run adapts its emotions with: each recording's speaker, each model's temperature."""

    source: str
    speaker_of: Mapping[str, str | None]
    temperatures: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of_run(cls, recordings: list[Recording], source: str, models) -> Speakers:
        """For ``recordings`` with ``source``, and the temperatures ``models`` (a ModelSet) fit."""
        temperatures = {spec.name: spec.speaker_adaptation.temperature for spec in models.specs
                        if spec.speaker_adaptation is not None}
        return cls(source, speakers_of(recordings, source), temperatures)

    def adapt(self, table: pa.Table) -> tuple[pa.Table, dict]:
        """:func:`adapt_table` with these speakers; the summary names the source."""
        table, summary = adapt_table(table, self.speaker_of, self.temperatures)
        return table, {"source": self.source, **summary}


def adapt_table(table: pa.Table, speaker_of: Mapping[str, str | None],
                temperatures: Mapping[str, float]) -> tuple[pa.Table, dict]:
    """The segments table with its emotion columns relative to each speaker.

    Args:
        table: The segments table (:func:`annotate.schema.segments_schema`).
        speaker_of: Each recording's speaker by ``path`` (missing or None: unknown).
        temperatures: Per emotion model name, its fitted temperature (default 1).

    Returns:
        The table (emotion, emotion_p and emo_* replaced on adapted rows; the
        rest as it was) and a summary for the run's metadata.
    """
    columns = EmotionColumns(table)
    summary = {"speakers": len({s for s in speaker_of.values() if s is not None}),
               "prior_s": PRIOR_S, "min_speech_s": MIN_SPEECH_S, "models": {}}
    for model in columns.model_names():
        rows, present, probs = columns.probabilities(model)
        speakers = np.array([speaker_of.get(columns.paths[r]) for r in rows], dtype=object)
        temperature = float(temperatures.get(model, 1.0))
        new, adapted = adapt_to_speakers(probs, speakers, columns.durations[rows], temperature)
        columns.replace(rows[adapted], present, new[adapted])
        summary["models"][model] = {
            "temperature": temperature, "segments": len(rows),
            "adapted_segments": int(adapted.sum()),
            "speakers_adapted": len({s for s, a in zip(speakers, adapted, strict=True) if a})}
    table = columns.to_table()
    return table, summary
