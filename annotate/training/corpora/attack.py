"""Att-HACK, French social attitudes: ``wav/F01_a1_s001_v01.wav``.

Stem ``speaker_attitude_sentence_version``: speaker ``F``/``M`` + 2 digits,
attitude ``a1``..``a4``, sentence ``s`` + 3 digits, version ``v`` + 2 digits.
"""

from __future__ import annotations

import os
import re

from annotate.training.corpora.base import Corpus
from annotate.training.corpora.scan import UnparsedName, read_named_files, unknown_code

#: Attitude code (2nd field) -> attitude name (annotate.labels.ATTITUDES).
#: CHECK THIS MAPPING against the Att-HACK documentation before training on it:
#: it is the only place the codes are interpreted, so a correction here is
#: the whole fix.
ATTITUDE_CODES: dict[str, str] = {
    "a1": "friendly",
    "a2": "distant",
    "a3": "dominant",
    "a4": "seductive",
}

GENDERS: dict[str, str] = {"F": "f", "M": "m"}

EXTRA_COLUMNS: tuple[str, ...] = ("sentence", "version")

_SPEAKER = re.compile(r"[FM]\d\d")
_SENTENCE = re.compile(r"s\d{3}")
_VERSION = re.compile(r"v\d\d")


def parse_attack_name(stem: str) -> dict:
    """Label one Att-HACK file from its stem, e.g. ``"F01_a1_s001_v01"``.

    Raises:
        UnparsedName: If the stem does not have four well-formed fields.
    """
    fields = stem.split("_")
    if len(fields) != 4:
        raise UnparsedName(
            f"{stem!r} has {len(fields)} '_'-separated fields, expected 4: "
            "speaker_attitude_sentence_version, e.g. 'F01_a1_s001_v01'"
        )
    speaker, attitude, sentence, version = fields
    if not _SPEAKER.fullmatch(speaker):
        raise UnparsedName(f"bad speaker {speaker!r} in {stem!r}, expected F or M + 2 digits")
    if attitude not in ATTITUDE_CODES:
        raise UnparsedName(unknown_code("attitude code", attitude, stem, ATTITUDE_CODES))
    if not _SENTENCE.fullmatch(sentence):
        raise UnparsedName(f"bad sentence {sentence!r} in {stem!r}, expected s + 3 digits")
    if not _VERSION.fullmatch(version):
        raise UnparsedName(f"bad version {version!r} in {stem!r}, expected v + 2 digits")
    return {
        "label": ATTITUDE_CODES[attitude],
        "speaker": speaker,
        "gender": GENDERS[speaker[0]],
        "sentence": sentence,
        "version": version,
    }


def read_attack(root: str | os.PathLike) -> Corpus:
    """Read Att-HACK from its folder (the one holding ``wav/``).

    Raises:
        InputError: If ``root`` is missing or holds no Att-HACK file.
    """
    return read_named_files(
        "attack", root, parse_attack_name, task="attitude", language="fr",
        extra_columns=EXTRA_COLUMNS,
    )  # fmt: skip
