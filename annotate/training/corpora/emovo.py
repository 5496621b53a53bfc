"""EMOVO, Italian emotional speech: ``f1/dis-f1-b1.wav``.

Stem ``emotion-speaker-sentence``; six actors ``f1``..``f3``, ``m1``..``m3``.
"""

from __future__ import annotations

import os

from annotate.training.corpora.base import Corpus
from annotate.training.corpora.scan import UnparsedName, read_named_files, unknown_code

#: Emotion token (first field of the stem) -> canonical emotion.
EMOTION_CODES: dict[str, str] = {
    "dis": "disgust",  # disgusto
    "gio": "happiness",  # gioia
    "neu": "neutral",
    "pau": "fear",  # paura
    "rab": "anger",  # rabbia
    "sor": "surprise",  # sorpresa
    "tri": "sadness",  # tristezza
}

#: The six EMOVO actors -> gender (the letter of their code).
SPEAKER_GENDERS: dict[str, str] = {
    "f1": "f", "f2": "f", "f3": "f", "m1": "m", "m2": "m", "m3": "m",
}  # fmt: skip

#: The 14 sentences: b (short), d (long), l (lists), n (nonsense).
SENTENCES: tuple[str, ...] = (
    "b1", "b2", "b3", "d1", "d2", "l1", "l2", "l3", "l4", "n1", "n2", "n3", "n4", "n5",
)  # fmt: skip

EXTRA_COLUMNS: tuple[str, ...] = ("sentence",)


def parse_emovo_name(stem: str) -> dict:
    """Label one EMOVO file from its stem, e.g. ``"dis-f1-b1"``.

    Raises:
        UnparsedName: If the stem does not have three known fields.
    """
    fields = stem.split("-")
    if len(fields) != 3:
        raise UnparsedName(
            f"{stem!r} has {len(fields)} '-'-separated fields, expected 3: "
            "emotion-speaker-sentence, e.g. 'dis-f1-b1'"
        )
    emotion, speaker, sentence = fields
    if emotion not in EMOTION_CODES:
        raise UnparsedName(unknown_code("emotion code", emotion, stem, EMOTION_CODES))
    if speaker not in SPEAKER_GENDERS:
        raise UnparsedName(unknown_code("speaker", speaker, stem, SPEAKER_GENDERS))
    if sentence not in SENTENCES:
        raise UnparsedName(unknown_code("sentence", sentence, stem, SENTENCES))
    return {
        "label": EMOTION_CODES[emotion],
        "speaker": speaker,
        "gender": SPEAKER_GENDERS[speaker],
        "sentence": sentence,
    }


def read_emovo(root: str | os.PathLike) -> Corpus:
    """Read EMOVO from its folder (the one holding ``f1/`` .. ``m3/``).

    Raises:
        InputError: If ``root`` is missing or holds no EMOVO file.
    """
    return read_named_files(
        "emovo", root, parse_emovo_name, task="emotion", language="it",
        extra_columns=EXTRA_COLUMNS,
    )  # fmt: skip
