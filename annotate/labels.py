"""The label vocabularies shared by the models, the adapters and the output table."""

from __future__ import annotations

#: Canonical emotion labels, in the order of the ``emo_<label>`` columns.
EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happiness",
    "sadness",
    "anger",
    "fear",
    "disgust",
    "surprise",
    "boredom",
)

#: Languages the bundled language model knows (ISO 639-1), in column order.
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "it")

#: Social attitudes of Att-HACK (their own label set, not emotions).
ATTITUDES: tuple[str, ...] = ("friendly", "distant", "dominant", "seductive")

TASKS: tuple[str, ...] = ("language", "emotion", "attitude")
