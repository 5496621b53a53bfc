"""RAVDESS, speech part: ``Actor_01/03-01-05-02-01-01-01.wav``.

Stem ``MM-VV-EE-II-SS-RR-AA``: modality, vocal channel (01 speech, 02 song),
emotion, intensity, statement, repetition, actor (odd = male). English.
"""

from __future__ import annotations

import os

from annotate.training.corpora.base import Corpus
from annotate.training.corpora.scan import UnparsedName, read_named_files, unknown_code

#: Emotion code (3rd field) -> canonical emotion.
EMOTION_CODES: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}

#: Modality code (1st field); the audio of 01 and 02 files is speech too.
MODALITIES: dict[str, str] = {"01": "audio-video", "02": "video-only", "03": "audio-only"}

SPEECH, SONG = "01", "02"

INTENSITIES: dict[str, str] = {"01": "normal", "02": "strong"}

STATEMENTS: dict[str, str] = {
    "01": "Kids are talking by the door",
    "02": "Dogs are sitting by the door",
}

REPETITIONS: tuple[str, ...] = ("01", "02")

ACTORS: tuple[str, ...] = tuple(f"{n:02d}" for n in range(1, 25))

EXTRA_COLUMNS: tuple[str, ...] = ("modality", "intensity", "statement", "text", "repetition")


def parse_ravdess_name(stem: str) -> dict:
    """Label one RAVDESS file from its stem, e.g. ``"03-01-05-02-01-01-01"``.

    Raises:
        UnparsedName: For a song file, a wrong number of fields or an unknown code.
    """
    fields = stem.split("-")
    if len(fields) != 7:
        raise UnparsedName(
            f"{stem!r} has {len(fields)} '-'-separated fields, expected 7: "
            "modality-channel-emotion-intensity-statement-repetition-actor, "
            "e.g. '03-01-05-02-01-01-01'"
        )
    modality, channel, emotion, intensity, statement, repetition, actor = fields
    if channel == SONG:
        raise UnparsedName(f"song, not speech (vocal channel {SONG!r} in {stem!r})")
    checks = (
        ("modality", modality, MODALITIES),
        ("vocal channel", channel, (SPEECH,)),
        ("emotion code", emotion, EMOTION_CODES),
        ("intensity", intensity, INTENSITIES),
        ("statement", statement, STATEMENTS),
        ("repetition", repetition, REPETITIONS),
        ("actor", actor, ACTORS),
    )
    for what, code, valid in checks:
        if code not in valid:
            raise UnparsedName(unknown_code(what, code, stem, valid))
    return {
        "label": EMOTION_CODES[emotion],
        "speaker": actor,
        "gender": "m" if int(actor) % 2 else "f",
        "modality": MODALITIES[modality],
        "intensity": INTENSITIES[intensity],
        "statement": statement,
        "text": STATEMENTS[statement],
        "repetition": repetition,
    }


def read_ravdess(root: str | os.PathLike) -> Corpus:
    """Read RAVDESS from its folder (the one holding ``Actor_01/`` ..).

    Raises:
        InputError: If ``root`` is missing or holds no RAVDESS speech file.
    """
    return read_named_files(
        "ravdess", root, parse_ravdess_name, task="emotion", language="en",
        extra_columns=EXTRA_COLUMNS,
    )  # fmt: skip
