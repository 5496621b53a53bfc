"""CREMA-D, crowd-sourced emotional acted speech: ``AudioWAV/1001_DFA_ANG_XX.wav``.

Stem ``actor_sentence_emotion_level``. English, 91 actors; their sex comes from
``VideoDemographics.csv`` when the download has it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pandas as pd

from annotate.errors import InputError
from annotate.training.corpora.base import Corpus
from annotate.training.corpora.scan import (
    UnparsedName,
    read_named_files,
    require_directory,
    unknown_code,
)

#: Emotion code (3rd field) -> canonical emotion.
EMOTION_CODES: dict[str, str] = {
    "ANG": "anger",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happiness",
    "NEU": "neutral",
    "SAD": "sadness",
}

#: Emotion level (4th field).
LEVELS: dict[str, str] = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}

#: Sentence code (2nd field) -> the sentence spoken.
SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}

DEMOGRAPHICS_FILE = "VideoDemographics.csv"
DEMOGRAPHICS_COLUMNS: tuple[str, ...] = ("ActorID", "Age", "Sex")
SEXES: dict[str, str] = {"male": "m", "female": "f"}

EXTRA_COLUMNS: tuple[str, ...] = ("sentence", "text", "level", "age")


def find_demographics(root: Path) -> Path | None:
    """Return the first ``VideoDemographics.csv`` (any case) under ``root``, or None."""
    found = [
        Path(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.lower() == DEMOGRAPHICS_FILE.lower()
    ]
    return min(found) if found else None


def read_demographics(path: Path) -> dict[str, dict[str, str | None]]:
    """Read ``VideoDemographics.csv`` into ``{actor: {"gender", "age"}}``.

    Raises:
        InputError: If the file cannot be read or lacks a needed column.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"cannot read {path}: {error}", kind="unreadable") from error
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in DEMOGRAPHICS_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"{path} lacks column(s) {missing}, expected [{', '.join(DEMOGRAPHICS_COLUMNS)}]"
            f", found [{', '.join(table.columns)}]",
            kind="unreadable",
        )
    return {
        row["ActorID"].strip(): {
            "gender": SEXES.get(row["Sex"].strip().lower()),
            "age": row["Age"].strip() or None,
        }
        for _, row in table.iterrows()
    }


def parse_cremad_name(stem: str, demographics: dict[str, dict] | None = None) -> dict:
    """Label one CREMA-D file from its stem, e.g. ``"1001_DFA_ANG_XX"``.

    Args:
        stem: The file name without extension.
        demographics: ``{actor: {"gender", "age"}}``; without it gender is None.

    Raises:
        UnparsedName: If the stem does not have four known fields.
    """
    fields = stem.split("_")
    if len(fields) != 4:
        raise UnparsedName(
            f"{stem!r} has {len(fields)} '_'-separated fields, expected 4: "
            "actor_sentence_emotion_level, e.g. '1001_DFA_ANG_XX'"
        )
    actor, sentence, emotion, level = fields
    if not (len(actor) == 4 and actor.isdigit()):
        raise UnparsedName(f"bad actor {actor!r} in {stem!r}, expected 4 digits like '1001'")
    for what, code, valid in (
        ("sentence code", sentence, SENTENCES),
        ("emotion code", emotion, EMOTION_CODES),
        ("level", level, LEVELS),
    ):
        if code not in valid:
            raise UnparsedName(unknown_code(what, code, stem, valid))
    known = (demographics or {}).get(actor, {})
    return {
        "label": EMOTION_CODES[emotion],
        "speaker": actor,
        "gender": known.get("gender"),
        "sentence": sentence,
        "text": SENTENCES[sentence],
        "level": LEVELS[level],
        "age": known.get("age"),
    }


def read_cremad(root: str | os.PathLike) -> Corpus:
    """Read CREMA-D from its folder (the one holding ``AudioWAV/``).

    Raises:
        InputError: If ``root`` is missing, holds no CREMA-D file, or its
            ``VideoDemographics.csv`` is unreadable.
    """
    folder = require_directory("cremad", root)
    table = find_demographics(folder)
    demographics = read_demographics(table) if table else None
    parse = functools.partial(parse_cremad_name, demographics=demographics)
    return read_named_files(
        "cremad", folder, parse, task="emotion", language="en", extra_columns=EXTRA_COLUMNS
    )
