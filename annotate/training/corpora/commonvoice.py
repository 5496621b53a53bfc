"""Mozilla Common Voice: ``<locale>/clips/*.mp3`` labelled by ``<locale>/*.tsv``.

The root is one locale folder, or a folder of locale folders (``en/``, ``de/``
..), each read on its own. The TSVs are read by header name, because the
columns differ between releases (``accent`` became ``accents``; ``variant``,
``sentence_id`` and ``sentence_domain`` appeared; old releases lack ``locale``).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pandas as pd

from annotate.errors import InputError
from annotate.training.corpora.base import Corpus, build_corpus
from annotate.training.corpora.scan import find_audio_files, is_audio_file, require_directory

#: The TSVs whose clips are validated, read in this order (first listing wins).
VALIDATED_TSVS: tuple[str, ...] = ("validated.tsv", "train.tsv", "dev.tsv", "test.tsv")

#: The official split of each split TSV.
SPLIT_TSVS: dict[str, str] = {"train.tsv": "train", "dev.tsv": "dev", "test.tsv": "test"}

#: TSVs of clips that failed or await validation: read only to explain why a
#: clip on disk is left out.
UNVALIDATED_TSVS: tuple[str, ...] = ("other.tsv", "invalidated.tsv")

#: Old column name -> name in recent releases.
RENAMED_COLUMNS: dict[str, str] = {"accent": "accents"}

REQUIRED_COLUMNS: tuple[str, ...] = ("client_id", "path")

#: TSV columns copied into the items, when the release has them.
EXTRA_COLUMNS: tuple[str, ...] = (
    "sentence_id",
    "sentence",
    "sentence_domain",
    "up_votes",
    "down_votes",
    "age",
    "gender_reported",
    "accents",
    "variant",
    "locale",
    "segment",
)

#: Self-reported gender (all releases' spellings) -> "m" / "f"; others give None.
GENDERS: dict[str, str] = {
    "male": "m",
    "male_masculine": "m",
    "female": "f",
    "female_feminine": "f",
}

_LOCALE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]+)*")
_CLIP_LOCALE = re.compile(r"common_voice_(?P<locale>[A-Za-z-]+)_\d+")


def read_commonvoice(root: str | os.PathLike) -> Corpus:
    """Read Common Voice from a locale folder or a folder of locale folders.

    Raises:
        InputError: If ``root`` is missing, a TSV is unreadable or lacks
            ``client_id``/``path``, or no clip could be labelled.
    """
    folder = require_directory("commonvoice", root)
    rows, unparsed = [], []
    if is_locale_folder(folder):
        locale_folders = [folder]
    else:
        locale_folders = sorted(p for p in folder.iterdir() if p.is_dir())
        unparsed += [
            (str(p), "not inside a locale folder")
            for p in sorted(folder.iterdir())
            if p.is_file() and is_audio_file(p)
        ]
    for locale_folder in locale_folders:
        locale_rows, locale_unparsed = read_locale_folder(locale_folder)
        rows += locale_rows
        unparsed += locale_unparsed
    return build_corpus("commonvoice", folder, rows, unparsed, EXTRA_COLUMNS)


def is_locale_folder(folder: Path) -> bool:
    """Tell whether ``folder`` is one locale (has a clip TSV or ``clips/``)."""
    tsvs = (*VALIDATED_TSVS, *UNVALIDATED_TSVS)
    return (folder / "clips").is_dir() or any((folder / t).is_file() for t in tsvs)


def read_clip_table(path: Path) -> pd.DataFrame:
    """Read one Common Voice TSV, every field a string ('' when empty).

    Quoting is off: sentences hold unbalanced double quotes.

    Raises:
        InputError: If the file cannot be parsed or lacks ``client_id``/``path``.
    """
    try:
        table = pd.read_csv(
            path,
            sep="\t",
            quoting=csv.QUOTE_NONE,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8",
        )
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"cannot read {path}: {error}", kind="unreadable") from error
    table = table.rename(columns=lambda c: RENAMED_COLUMNS.get(c.strip(), c.strip()))
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"{path} lacks column(s) [{', '.join(missing)}]: expected at least "
            f"[{', '.join(REQUIRED_COLUMNS)}], found [{', '.join(table.columns)}]",
            kind="unreadable",
        )
    return table


def read_locale_folder(folder: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Label the clips of one locale folder from its TSVs.

    Returns:
        The rows of the labelled clips, and ``(path, reason)`` for each clip
        listed but missing on disk, or on disk but not validated.

    Raises:
        InputError: If a TSV is unreadable.
    """
    clips_folder = folder / "clips"
    listings: dict[str, tuple[str, dict]] = {}  # TSV path -> (first TSV, its record)
    splits: dict[str, str] = {}
    for tsv_name in VALIDATED_TSVS:
        if not (folder / tsv_name).is_file():
            continue
        for record in read_clip_table(folder / tsv_name).to_dict("records"):
            listings.setdefault(record["path"], (tsv_name, record))
            if tsv_name in SPLIT_TSVS:
                splits.setdefault(record["path"], SPLIT_TSVS[tsv_name])

    on_disk = _index_clips(find_audio_files(folder), clips_folder)
    rows, unparsed, used = [], [], set()
    for clip, (tsv_name, record) in listings.items():
        audio = on_disk.get(clip) or on_disk.get(f"stem:{clip}")
        if audio is None:
            unparsed.append((str(clips_folder / clip), f"listed in {tsv_name} but missing"))
            continue
        used.add(audio)
        row, problem = _clip_row(audio, record, tsv_name, folder.name, splits.get(clip))
        if problem:
            unparsed.append((str(audio), problem))
        else:
            rows.append(row)

    left_over = sorted(set(on_disk.values()) - used)
    if left_over:
        unvalidated = _unvalidated_listings(folder)
        for audio in left_over:
            key = _clip_key(audio, clips_folder)
            tsv_name = unvalidated.get(key) if key else None
            reason = (
                f"listed only in {tsv_name} (not validated)"
                if tsv_name
                else "not listed in any TSV"
            )
            unparsed.append((str(audio), reason))
    return rows, unparsed


def _clip_key(audio: Path, clips_folder: Path) -> str | None:
    try:
        return audio.relative_to(clips_folder).as_posix()
    except ValueError:
        return None


def _index_clips(audio_files: list[Path], clips_folder: Path) -> dict[str, Path]:
    """Map each TSV-style name (path under ``clips/``) to its file.

    Files outside ``clips/`` get a key no TSV can hold, so they stay unlisted;
    ``stem:<name>`` keys match the extension-less paths of some releases.
    """
    index = {}
    for audio in audio_files:
        key = _clip_key(audio, clips_folder)
        if key is None:
            index[f"outside:{audio}"] = audio
            continue
        index[key] = audio
        index.setdefault(f"stem:{key[: -len(audio.suffix)]}", audio)
    return index


def _unvalidated_listings(folder: Path) -> dict[str, str]:
    listed = {}
    for tsv_name in UNVALIDATED_TSVS:
        if (folder / tsv_name).is_file():
            for clip in read_clip_table(folder / tsv_name)["path"]:
                listed.setdefault(clip, tsv_name)
    return listed


def _clip_row(
    audio: Path, record: dict, tsv_name: str, folder_name: str, split: str | None
) -> tuple[dict, str | None]:
    """Build one clip's row, or return why it cannot be labelled."""
    client_id = record["client_id"].strip()
    if not client_id:
        return {}, f"no client_id in {tsv_name}"
    locale = _locale(record.get("locale", ""), folder_name, audio.stem)
    if locale is None:
        return {}, (
            f"no locale: {tsv_name} has no 'locale' value, and neither the folder name "
            f"{folder_name!r} nor the file name is a locale code like 'en' or 'fr-FR'"
        )
    language = locale.split("-")[0].lower()
    reported_gender = record.get("gender", "").strip()
    row = {column: record.get(column) for column in EXTRA_COLUMNS}
    row.update(
        path=str(audio),
        label=language,
        task="language",
        speaker=f"commonvoice:{client_id}",
        gender=GENDERS.get(reported_gender.lower()),
        language=language,
        split=split,
        corpus="commonvoice",
        gender_reported=reported_gender,
        locale=locale,
    )
    return row, None


def _locale(column_value: str, folder_name: str, stem: str) -> str | None:
    """Take the locale from the TSV, else the folder name, else the clip's name."""
    for candidate in (column_value.strip(), folder_name):
        if _LOCALE.fullmatch(candidate):
            return candidate
    match = _CLIP_LOCALE.fullmatch(stem)
    return match["locale"] if match else None
