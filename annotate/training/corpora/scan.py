"""Find audio files under a corpus folder and label them from their file names."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from annotate.errors import InputError
from annotate.training.corpora.base import Corpus, build_corpus

#: File extensions of the formats soundfile (libsndfile) reads, lower case.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif",
        ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64", ".sd2", ".voc", ".sf",
        ".ircam", ".htk", ".paf", ".svx", ".8svx", ".nist", ".sph", ".mat", ".pvf",
        ".xi", ".sds", ".avr", ".wve", ".mpc",
    }
)  # fmt: skip


class UnparsedName(ValueError):
    """A file name that does not fit its corpus' pattern.

    Attributes:
        reason: Why, naming the bad part and the valid values.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unknown_code(what: str, code: str, stem: str, valid: Iterable[str]) -> str:
    """Format the reason for a code outside its corpus' code table.

    Example: ``unknown emotion code 'X' in '03a01Xa', expected one of [A, E, F]``.
    """
    listed = ", ".join(sorted(valid))
    return f"unknown {what} {code!r} in {stem!r}, expected one of [{listed}]"


def require_directory(name: str, root: str | os.PathLike) -> Path:
    """Return ``root`` as an absolute path, or raise if it is not a folder.

    Raises:
        InputError: If ``root`` does not exist or is not a folder.
    """
    folder = Path(os.path.abspath(Path(root).expanduser()))
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"{name} corpus folder {folder} {what}", kind="missing")
    return folder


def is_audio_file(path: Path) -> bool:
    """Tell by its extension (any case) whether soundfile can read ``path``."""
    return path.suffix.lower() in AUDIO_EXTENSIONS


def find_audio_files(root: Path) -> list[Path]:
    """List the audio files under ``root``, recursively, sorted.

    Symbolic links to folders are followed, each real folder once.
    """
    found = []
    visited = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders.clear()
            continue
        visited.add(real)
        found.extend(Path(folder, n) for n in names if is_audio_file(Path(n)))
    return sorted(found)


def read_named_files(
    name: str,
    root: str | os.PathLike,
    parse_name: Callable[[str], dict],
    *,
    task: str,
    language: str,
    extra_columns: tuple[str, ...],
) -> Corpus:
    """Read a corpus whose labels are all written in its file names.

    Args:
        name: The adapter's name; speakers are prefixed with ``name + ":"``.
        root: The corpus folder, searched recursively.
        parse_name: Maps a file stem to ``label``, ``speaker``, ``gender`` and
            the ``extra_columns``; raises ``UnparsedName`` for a bad stem.
        task: ``"emotion"``, ``"language"`` or ``"attitude"``.
        language: ISO 639-1 code of the whole corpus.
        extra_columns: The corpus' own columns.

    Returns:
        The corpus, with bad names in ``unparsed``.

    Raises:
        InputError: If ``root`` is missing or no file could be labelled.
    """
    folder = require_directory(name, root)
    rows, unparsed = [], []
    for path in find_audio_files(folder):
        try:
            fields = parse_name(path.stem)
        except UnparsedName as bad_name:
            unparsed.append((str(path), bad_name.reason))
            continue
        rows.append(
            {
                **fields,
                "path": str(path),
                "task": task,
                "speaker": f"{name}:{fields['speaker']}",
                "language": language,
                "split": None,
                "corpus": name,
            }
        )
    return build_corpus(name, folder, rows, unparsed, extra_columns)
