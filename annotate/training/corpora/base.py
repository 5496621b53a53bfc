"""The corpus every adapter returns: one row per recording, plus what could not be read."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from annotate.errors import InputError

#: Columns every adapter fills, in this order; each corpus appends its own fields.
COMMON_COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "task",
    "speaker",
    "gender",
    "language",
    "split",
    "corpus",
)

#: The columns a manifest starts with; the rest follow in the items' order.
MANIFEST_LEADING_COLUMNS: tuple[str, ...] = ("path", "speaker", "language", "label")


@dataclass(frozen=True)
class Corpus:
    """The recordings of one corpus, labelled from its file names or tables.

    Attributes:
        name: The adapter's name, e.g. ``"emodb"``.
        root: Absolute path of the folder that was read.
        items: One row per recording, sorted by ``path``; every column holds
            ``str`` or ``None`` (see ``COMMON_COLUMNS``).
        unparsed: ``(path, reason)`` for each audio file that could not be
            labelled, sorted by path.
    """

    name: str
    root: Path
    items: pd.DataFrame
    unparsed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict:
        """Count files, speakers and labels, JSON-serialisable.

        Returns:
            ``{"corpus", "root", "files", "speakers", "labels": {label: count},
            "per_speaker": {speaker: count}, "unparsed": [{"path", "reason"}]}``.
        """
        labels = Counter(self.items["label"])
        speakers = Counter(self.items["speaker"])
        return {
            "corpus": self.name,
            "root": str(self.root),
            "files": int(len(self.items)),
            "speakers": len(speakers),
            "labels": {label: int(labels[label]) for label in sorted(labels)},
            "per_speaker": {name: int(speakers[name]) for name in sorted(speakers)},
            "unparsed": [{"path": path, "reason": reason} for path, reason in self.unparsed],
        }

    def to_manifest(self, path: str | os.PathLike) -> Path:
        """Write the items as a Parquet manifest.

        Audio paths inside the manifest's folder are written relative to it (so
        the manifest travels with the corpus); any other path stays absolute.
        Every column is stored as a string column, so manifests of different
        corpora concatenate cleanly.

        Args:
            path: Where to write the manifest; parent folders are created.

        Returns:
            The absolute path written.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        target = Path(os.path.abspath(Path(path).expanduser()))
        target.parent.mkdir(parents=True, exist_ok=True)
        table = self.items.copy()
        table["path"] = [_relative_if_inside(p, target.parent) for p in table["path"]]
        rest = [c for c in table.columns if c not in MANIFEST_LEADING_COLUMNS]
        table = table[[*MANIFEST_LEADING_COLUMNS, *rest]]
        schema = pa.schema([(column, pa.string()) for column in table.columns])
        arrow_table = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
        # Written beside the target and renamed, so a crash never leaves half a manifest.
        partial = target.with_name(target.name + ".partial")
        pq.write_table(arrow_table, partial)
        os.replace(partial, target)
        return target


def _relative_if_inside(audio_path: str, folder: Path) -> str:
    try:
        return Path(audio_path).relative_to(folder).as_posix()
    except ValueError:
        return audio_path


def build_corpus(
    name: str,
    root: Path,
    rows: list[dict],
    unparsed: list[tuple[str, str]],
    extra_columns: tuple[str, ...] = (),
) -> Corpus:
    """Assemble an adapter's rows into a ``Corpus``.

    Args:
        name: The adapter's name.
        root: Absolute path of the folder read.
        rows: One dict per recording with the ``COMMON_COLUMNS`` and
            ``extra_columns`` as keys; empty strings count as missing.
        unparsed: ``(path, reason)`` for the files that could not be labelled.
        extra_columns: The corpus' own columns, in the order to keep.

    Returns:
        The corpus, items sorted by path.

    Raises:
        InputError: If no recording could be labelled.
    """
    unparsed = sorted(unparsed)
    if not rows:
        raise InputError(_nothing_found(name, root, unparsed), kind="empty")
    columns = [*COMMON_COLUMNS, *extra_columns]
    cleaned = [{column: _text_or_none(row.get(column)) for column in columns} for row in rows]
    items = pd.DataFrame(cleaned, columns=columns, dtype=object)
    items = items.sort_values("path", ignore_index=True)
    return Corpus(name=name, root=root, items=items, unparsed=unparsed)


def _text_or_none(value: object) -> str | None:
    if value is None or value is pd.NA or value == "":
        return None
    return str(value)


def _nothing_found(name: str, root: Path, unparsed: list[tuple[str, str]]) -> str:
    if not unparsed:
        return f"no audio files for corpus {name!r} under {root}"
    path, reason = unparsed[0]
    return (
        f"no {name} recordings under {root}: none of its {len(unparsed)} audio files "
        f"could be labelled, e.g. {path}: {reason}"
    )
