"""Find the recordings to annotate: walk directories, read manifests.

Each recording gets a *key*, the ``path`` written to the output: its path
relative to the input directory it was found under, or its path as written in
the manifest. Inputs that are broken in a way discovery can already see
(missing files, broken links, directories named like audio, bad manifest
lines) become :class:`Failure` rows instead of stopping the run.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from annotate.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

#: Extensions libsndfile decodes (case-insensitive).
AUDIO_EXTENSIONS = frozenset(
    "wav wave flac ogg oga opus mp3 aif aiff aifc au snd caf w64 rf64 voc sd2 avr "
    "htk ircam nist paf pvf sds svx wve xi mpc".split()
)
#: Audio formats libsndfile cannot decode: listed so that they are reported
#: as failures rather than silently skipped.
UNSUPPORTED_AUDIO_EXTENSIONS = frozenset("m4a aac wma webm mp4 amr ape alac".split())
MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".ndjson")
COMMON_VOICE_COLUMNS = {"client_id", "path", "sentence"}


@dataclass(frozen=True)
class Recording:
    """One input recording.

    Attributes:
        key: The ``path`` column of the output (always valid UTF-8).
        source: Where to read it (may hold undecodable bytes of the file system).
        speaker: Who speaks, where a manifest says (its ``speaker`` column, or
            a Common Voice TSV's ``client_id``); None otherwise.
    """

    key: str
    source: str
    speaker: str | None = None


@dataclass(frozen=True)
class Failure:
    """An input that could not be annotated: one row of the failures table."""

    path: str
    error: str
    message: str


def printable(name: str) -> str:
    r"""A file-system name as valid UTF-8 text; undecodable bytes become ``\\xNN``."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from JSON)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def extension(name: str) -> str:
    return os.path.splitext(name)[1].lower().lstrip(".")


def is_audio_name(name: str) -> bool:
    ext = extension(name)
    return ext in AUDIO_EXTENSIONS or ext in UNSUPPORTED_AUDIO_EXTENSIONS


def walk_directory(root: str | Path) -> tuple[list[Recording], list[Failure]]:
    """All audio files under ``root``, recursively, sorted by key.

    Symbolic links to files are followed; links to directories are not
    descended (no loops). Non-audio files (TSV, CSV, text) are ignored.
    Entries with an audio extension that are not regular files become failures.
    """
    root = os.fspath(root)
    recordings: list[Recording] = []
    failures: list[Failure] = []

    def on_error(error: OSError) -> None:
        failures.append(Failure(printable(os.path.relpath(error.filename, root)), "unreadable",
                                f"cannot list directory: {error.strerror}"))

    for folder, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames.sort()
        for name in dirnames:
            if is_audio_name(name):
                key = printable(os.path.relpath(os.path.join(folder, name), root))
                failures.append(Failure(key, "not-a-file", "a directory, not an audio file"))
        for name in sorted(filenames):
            if not is_audio_name(name):
                continue
            path = os.path.join(folder, name)
            key = printable(os.path.relpath(path, root)).replace(os.sep, "/")
            recordings.append(Recording(key, path))
    recordings.sort(key=lambda r: r.key)
    return recordings, failures


def read_manifest(path: str | Path) -> tuple[list[Recording], list[Failure]]:
    """Recordings listed in a CSV, TSV, Parquet or JSONL manifest with a ``path`` column.

    Relative paths resolve against the manifest's folder; a Common Voice TSV
    resolves them under the ``clips/`` folder beside it. Duplicate rows are
    annotated once. Malformed lines become failures.

    Raises:
        UsageError: The manifest cannot be read at all or has no ``path`` column.
    """
    import pandas as pd  # here: a run over folders need not import it (0.3 s)

    path = Path(path)
    suffix = path.suffix.lower()
    failures: list[Failure] = []
    try:
        if suffix in (".csv", ".tsv"):
            table = _read_delimited(path, "\t" if suffix == ".tsv" else ",", failures)
        elif suffix == ".parquet":
            table = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            table = _read_jsonl(path, failures)
        else:
            raise UsageError(
                f"bad manifest type {path.suffix!r} for {path}, expected one of "
                f"[{', '.join(MANIFEST_SUFFIXES)}]"
            )
    except UsageError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read manifest {path}: {error}") from None
    if "path" not in table.columns:
        columns = ", ".join(map(str, table.columns[:20]))
        raise UsageError(f"manifest {path} has no 'path' column (columns: {columns})")
    base = path.parent
    if suffix == ".tsv" and COMMON_VOICE_COLUMNS <= set(table.columns) and (base / "clips").is_dir():
        base = base / "clips"
    column = next((c for c in ("speaker", "client_id") if c in table.columns), None)
    speakers = table[column] if column else [None] * len(table)
    recordings: list[Recording] = []
    seen: set[str] = set()
    for value, speaker in zip(table["path"], speakers, strict=True):
        if _blank(value):
            failures.append(Failure(f"{path.name}:<empty>", "manifest", "row with an empty path"))
            continue
        key = str(value)
        if key in seen:
            continue  # a duplicate row: annotate once
        seen.add(key)
        source = key if os.path.isabs(key) else os.path.join(base, key)
        recordings.append(Recording(printable(key), source,
                                    None if _blank(speaker) else str(speaker)))
    return recordings, failures


def _blank(value) -> bool:
    """An empty manifest cell: None, NaN, pandas' NA or ''."""
    return (value is None or type(value).__name__ == "NAType"
            or (isinstance(value, float) and value != value) or str(value) == "")


def _read_delimited(path: Path, sep: str, failures: list[Failure]) -> pd.DataFrame:
    # Quoting off: Common Voice sentences contain unbalanced quotes. Short or
    # long lines are reported, not guessed at.
    # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark,
    # which would otherwise hide the 'path' column.
    import pandas as pd

    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = text.splitlines()
    if not lines:
        raise UsageError(f"manifest {path} is empty")
    try:
        header = [name.strip() for name in _split_line(lines[0], sep)]
    except csv.Error as error:
        raise UsageError(f"cannot read the header of manifest {path}: {error}") from None
    if header.count("path") > 1:
        raise UsageError(f"manifest {path} has {header.count('path')} 'path' columns")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            fields = _split_line(line, sep)
        except csv.Error as error:
            failures.append(Failure(f"{path.name}:{number}", "manifest",
                                    f"line {number} cannot be parsed: {error}"))
            continue
        if len(fields) != len(header):
            failures.append(Failure(
                f"{path.name}:{number}", "manifest",
                f"line {number} has {len(fields)} fields, the header has {len(header)}"))
            continue
        rows.append(fields)
    return pd.DataFrame(rows, columns=header, dtype=str)


def _split_line(line: str, sep: str) -> list[str]:
    return line.split(sep) if sep == "\t" else next(csv.reader(io.StringIO(line)), [])


def _read_jsonl(path: Path, failures: list[Failure]) -> pd.DataFrame:
    import json

    import pandas as pd

    rows = []
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError as error:
                failures.append(Failure(f"{path.name}:{number}", "manifest",
                                        f"line {number} is not a JSON object: {error}"))
                continue
            rows.append(row)
    # object dtype keeps each path as the Python string it was: a JSON
    # "\udce9" is Python's escape of an undecodable file-name byte, which
    # Arrow-backed strings would refuse.
    return pd.DataFrame(rows, dtype=object) if rows else pd.DataFrame({"path": []})


def discover(inputs: list[str | Path]) -> tuple[list[Recording], list[Failure]]:
    """Recordings from directories and manifests, in order, keys unique.

    Raises:
        UsageError: An input is neither a directory nor a manifest file.
    """
    recordings: list[Recording] = []
    failures: list[Failure] = []
    for item in inputs:
        item_path = Path(item)
        if item_path.is_dir():
            found, failed = walk_directory(item_path)
        elif item_path.is_file() and item_path.suffix.lower() in MANIFEST_SUFFIXES:
            found, failed = read_manifest(item_path)
        elif item_path.is_file() and is_audio_name(item_path.name):
            found, failed = [Recording(printable(item_path.name), str(item_path))], []
        elif not item_path.exists():
            raise UsageError(f"input not found: {item}")
        else:
            raise UsageError(
                f"bad input {str(item)!r}: expected a directory, an audio file or a manifest "
                f"({', '.join(MANIFEST_SUFFIXES)})"
            )
        recordings.extend(found)
        failures.extend(failed)
    unique: dict[str, Recording] = {}
    for recording in recordings:
        if recording.key in unique:
            if recording.source != unique[recording.key].source:
                failures.append(Failure(recording.key, "duplicate",
                                        f"another input already has the key {recording.key!r}"))
            continue
        unique[recording.key] = recording
    return list(unique.values()), failures
