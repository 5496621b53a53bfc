"""speechocean762: English read by Mandarin-L1 adults and children, ``WAVE/SPEAKERnnnn/*.WAV``.

Every recording is English; the speaker is the folder's number. Ages and
genders come from the release's Kaldi-style tables (``train/spk2age``,
``train/spk2gender``, the same under ``test/``) or from an
``utterances.csv`` (columns ``speaker``, ``age``, ``gender``) where a copy
has one; a speaker neither lists keeps them empty. The corpus labels
language only (its pronunciation scores are not read).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from annotate.training.corpora.base import Corpus, build_corpus
from annotate.training.corpora.scan import find_audio_files, require_directory

EXTRA_COLUMNS: tuple[str, ...] = ("age",)

_SPEAKER_FOLDER = re.compile(r"SPEAKER(?P<speaker>\d+)", re.IGNORECASE)


def read_speechocean(root: str | os.PathLike) -> Corpus:
    """Read speechocean762 from its folder (the one holding ``WAVE/``, or ``WAVE/`` itself).

    Raises:
        InputError: If ``root`` is missing or holds no recording in a speaker folder.
    """
    folder = require_directory("speechocean762", root)
    ages, genders = _speaker_tables(folder)
    rows, unparsed = [], []
    for path in find_audio_files(folder):
        match = _SPEAKER_FOLDER.fullmatch(path.parent.name)
        if match is None:
            unparsed.append((str(path), "not inside a SPEAKERnnnn folder"))
            continue
        speaker = match["speaker"].zfill(4)
        rows.append({
            "path": str(path), "label": "en", "task": "language",
            "speaker": f"speechocean762:{speaker}", "gender": genders.get(speaker),
            "language": "en", "split": None, "corpus": "speechocean762",
            "age": ages.get(speaker),
        })
    return build_corpus("speechocean762", folder, rows, unparsed, EXTRA_COLUMNS)


def _speaker_tables(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Each speaker's age and gender (``"m"``/``"f"``), from whichever tables the copy has."""
    ages, genders = {}, {}
    for base in (folder, folder.parent):
        for part in ("train", "test"):
            ages |= _kaldi_table(base / part / "spk2age")
            genders |= _kaldi_table(base / part / "spk2gender")
        listing = base / "utterances.csv"
        if listing.is_file():
            with listing.open(newline="", encoding="utf-8") as file:
                for row in csv.DictReader(file):
                    speaker = (row.get("speaker") or "").zfill(4)
                    if row.get("age"):
                        ages.setdefault(speaker, row["age"])
                    if row.get("gender"):
                        genders.setdefault(speaker, row["gender"])
    genders = {s: g.lower()[:1] for s, g in genders.items() if g.lower()[:1] in ("m", "f")}
    return ages, genders


def _kaldi_table(path: Path) -> dict[str, str]:
    """``<speaker> <value>`` lines -> {speaker (4 digits): value}; {} without the file."""
    if not path.is_file():
        return {}
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2:
            table[parts[0].zfill(4)] = parts[1]
    return table
