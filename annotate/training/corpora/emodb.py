"""EmoDB, the Berlin Database of Emotional Speech: ``wav/03a01Fa.wav``.

Stem ``SSTTTEV``: speaker (2 digits), text (``a01``..``b10``), emotion letter,
version letter. German, ten actors.
"""

from __future__ import annotations

import os
import re

from annotate.training.corpora.base import Corpus
from annotate.training.corpora.scan import UnparsedName, read_named_files, unknown_code

#: Emotion letter (6th character of the stem) -> canonical emotion.
EMOTION_CODES: dict[str, str] = {
    "W": "anger",  # Wut
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happiness",  # Freude
    "T": "sadness",  # Trauer
    "N": "neutral",
}

#: The ten EmoDB actors -> gender.
SPEAKER_GENDERS: dict[str, str] = {
    "03": "m", "10": "m", "11": "m", "12": "m", "15": "m",
    "08": "f", "09": "f", "13": "f", "14": "f", "16": "f",
}  # fmt: skip

EXTRA_COLUMNS: tuple[str, ...] = ("text", "version")

_STEM = re.compile(r"(?P<speaker>\d\d)(?P<text>[a-z]\d\d)(?P<emotion>.)(?P<version>[a-z])")


def parse_emodb_name(stem: str) -> dict:
    """Label one EmoDB file from its stem, e.g. ``"03a01Fa"``.

    Raises:
        UnparsedName: If the stem does not fit ``SSTTTEV`` or holds an unknown code.
    """
    match = _STEM.fullmatch(stem)
    if match is None:
        raise UnparsedName(
            f"{stem!r} does not fit SSTTTEV (speaker 2 digits, text like 'a01', "
            "emotion letter, version letter), e.g. '03a01Fa'"
        )
    speaker, emotion = match["speaker"], match["emotion"]
    if speaker not in SPEAKER_GENDERS:
        raise UnparsedName(unknown_code("speaker", speaker, stem, SPEAKER_GENDERS))
    if emotion not in EMOTION_CODES:
        raise UnparsedName(unknown_code("emotion code", emotion, stem, EMOTION_CODES))
    return {
        "label": EMOTION_CODES[emotion],
        "speaker": speaker,
        "gender": SPEAKER_GENDERS[speaker],
        "text": match["text"],
        "version": match["version"],
    }


def read_emodb(root: str | os.PathLike) -> Corpus:
    """Read EmoDB from its folder (the one holding ``wav/``, or ``wav/`` itself).

    Raises:
        InputError: If ``root`` is missing or holds no EmoDB file.
    """
    return read_named_files(
        "emodb", root, parse_emodb_name, task="emotion", language="de",
        extra_columns=EXTRA_COLUMNS,
    )  # fmt: skip
