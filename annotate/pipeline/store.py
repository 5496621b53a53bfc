"""Where results go: the partial state of a run, resumable, and the final tables.

Work in progress lives beside the output, in ``<output>.partial/``::

    lock              held (flock) while a run writes; a second run refuses
    fingerprint.json  settings + model hashes of the run that owns the state
    parts/NNNNNN-<sha256>.parquet  finished recordings, each part written
                      atomically, named after a hash of its bytes

A recording is done when its rows are in a part. A re-run with the same
fingerprint skips what is done (``store.contains(key)``); the final table is
written (atomically) only when every recording is done, and then the partial
state is removed. Parts whose bytes no longer match their name or that
cannot be read back (truncated, corrupted) are deleted and their recordings
recomputed; so are parts found without a fingerprint (a clean-up that was
cut short). A full disk or any other write error becomes a
:class:`StateError` that leaves the finished parts in place for a resume.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from annotate.audio.discover import Failure
from annotate.errors import StateError, UsageError
from annotate.pipeline.speakers import Speakers
from annotate.schema import failures_schema

METADATA_KEY = b"annotate"
#: ``000042-<first 16 hex digits of the part's SHA-256>.parquet``
PART_NAME = re.compile(r"^(\d{6,})-([0-9a-f]{16})\.parquet$")


def failures_path(output: Path) -> Path:
    """``out.parquet`` -> ``out.failures.parquet``."""
    return output.with_name(output.stem + ".failures" + (output.suffix or ".parquet"))


def check_output_path(output: Path) -> None:
    """Fail before any work if the output cannot be written.

    Raises:
        UsageError: The folder is missing or not writable, or the output is a folder.
    """
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        if folder.exists():
            raise UsageError(f"the output folder {folder} is not a folder")
        raise UsageError(f"the output folder {folder} does not exist")
    # os.access also answers EROFS (read-only file system), even for root.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"the output folder {folder} is not writable")
    if output.is_dir():
        raise UsageError(f"the output {output} is a directory; give a file name such as out.parquet")


def write_atomically(table: pa.Table, path: Path, digest_name: bool = False) -> Path:
    """Write a Parquet file so that it appears whole or not at all (temp + fsync + rename).

    Args:
        table: What to write.
        path: Where; with ``digest_name`` the stem gets ``-<hash of the bytes>``.
        digest_name: Name the file after its content, so that any later change
            to its bytes is seen on reading (see :func:`part_is_intact`).

    Returns:
        The path written.

    Raises:
        StateError: The disk is full or the file cannot be written; nothing
            is left at ``path``.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
            if digest_name:
                handle.seek(0)
                digest = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
                path = path.with_name(f"{path.stem}-{digest}{path.suffix}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(error, path) from None
    return path


def write_error(error: OSError, path: Path) -> StateError:
    """A :class:`StateError` for a failed write, naming the full disk if that is why."""
    keep = ("finished work is kept: free some space and run the same command again to resume")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StateError(
            f"no space left on the disk holding {path.parent} (the file system mounted at "
            f"{_mount_point(path.parent)}: {os.strerror(error.errno)}) while writing "
            f"{path.name}; {keep}")
    if error.errno == errno.EFBIG:
        return StateError(
            f"cannot write {path}: file too large for the disk holding {path.parent} or for "
            f"this process's file-size limit (ulimit -f); {keep}")
    return StateError(f"cannot write {path}: {error.strerror or error}")


def _mount_point(folder: Path) -> Path:
    folder = Path(os.path.abspath(folder))
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def part_is_intact(part: Path) -> bool:
    """Whether a part's bytes still hash to the digest in its name."""
    match = PART_NAME.match(part.name)
    if not match:
        return False
    with open(part, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16] == match.group(2)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metadata(path: Path) -> dict:
    """The ``annotate`` key-value metadata of a written table (empty if none)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


class PartialStore:
    """The resumable state of one run (see the module docstring).

    Args:
        output: The final table's path.
        fingerprint: Hash of everything that changes the rows.
        overwrite: Discard existing partial state or output with another fingerprint.
    """

    def __init__(self, output: Path, fingerprint: str, overwrite: bool = False) -> None:
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".partial")
        self.parts = self.folder / "parts"
        self.fingerprint = fingerprint
        self.overwrite = overwrite
        self._lock_handle = None
        self._done: set[str] = set()
        self._next_part = 0
        self.discarded_parts: list[str] = []

    def __enter__(self) -> PartialStore:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, check the fingerprint and collect what is already done.

        Raises:
            StateError: Another run holds the lock, the state belongs to other
                settings, or the state cannot be written (disk full, ...).
        """
        try:
            self.folder.mkdir(exist_ok=True)
            self._lock_handle = open(self.folder / "lock", "a")
        except OSError as error:
            raise write_error(error, self.folder / "lock") from None
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            self._lock_handle = None
            raise StateError(
                f"another annotate run is writing {self.output} (lock held on {self.folder}); "
                "wait for it to finish"
            ) from None
        try:
            self._check_fingerprint()
            self._scan_parts()
        except OSError as error:
            self.close()
            raise write_error(error, self.folder / "fingerprint.json") from None
        except BaseException:
            self.close()
            raise

    def _check_fingerprint(self) -> None:
        stamp = self.folder / "fingerprint.json"
        try:
            previous = json.loads(stamp.read_text())["fingerprint"]
        except (OSError, ValueError, TypeError, KeyError):
            # Parts without a readable fingerprint are of unknown settings (a
            # clean-up cut short removes the fingerprint first): never reuse them.
            previous = None
            shutil.rmtree(self.parts, ignore_errors=True)
        if previous is not None and previous != self.fingerprint:
            # State without finished parts (a run stopped by a refused model,
            # say) holds nothing to lose: it is simply replaced.
            if any(self.parts.glob("*.parquet")) and not self.overwrite:
                raise StateError(
                    f"{self.folder} holds an interrupted run with other settings or models "
                    f"(fingerprint {str(previous)[:12]}, this run {self.fingerprint[:12]}); "
                    "run with the same settings to resume it, or pass --overwrite to start over"
                )
            shutil.rmtree(self.parts, ignore_errors=True)
        stamp_tmp = stamp.with_suffix(".tmp")
        stamp_tmp.write_text(json.dumps({"fingerprint": self.fingerprint}))
        os.replace(stamp_tmp, stamp)
        self.parts.mkdir(exist_ok=True)

    def _scan_parts(self) -> None:
        # Temporary files of a run that was killed while writing; with the
        # lock held no other run can be writing them.
        ours = re.compile(rf"^\.({re.escape(self.output.name)}|"
                          rf"{re.escape(failures_path(self.output).name)})\.\d+\.tmp$")
        strays = [*self.parts.glob(".*.tmp"),
                  *(p for p in self.output.parent.glob(".*.tmp") if ours.match(p.name))]
        for stray in strays:
            stray.unlink(missing_ok=True)
        numbers = []
        for part in sorted(self.parts.glob("*.parquet")):
            try:
                if not part_is_intact(part):
                    raise ValueError("bytes do not match the name")
                table = pq.read_table(part, page_checksum_verification=True)
                keys = set(table.column("path").to_pylist())
            except Exception:  # noqa: BLE001 - any unreadable part is recomputed
                self.discarded_parts.append(part.name)
                part.unlink(missing_ok=True)
                continue
            self._done |= keys
            numbers.append(int(PART_NAME.match(part.name).group(1)))
        self._next_part = max(numbers, default=-1) + 1

    def close(self) -> None:
        """Release the lock (the partial state stays until :meth:`finalize`)."""
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def contains(self, key: str) -> bool:
        """Whether the recording ``key`` is already done."""
        return key in self._done

    @property
    def done_count(self) -> int:
        return len(self._done)

    def write_part(self, table: pa.Table) -> None:
        """Store the rows of finished recordings (whole recordings only)."""
        if table.num_rows == 0:
            return
        write_atomically(table, self.parts / f"{self._next_part:06d}.parquet", digest_name=True)
        self._next_part += 1
        self._done |= set(table.column("path").to_pylist())

    def finalize(self, schema: pa.Schema, metadata: dict, failures: list[Failure],
                 speakers: Speakers | None = None) -> None:
        """Write the failures table, then the output (sorted by path, start), then clean up."""
        write_atomically(failures_table(failures), failures_path(self.output))
        parts = sorted(self.parts.glob("*.parquet"))
        table = final_table([pq.read_table(p) for p in parts], schema, metadata, speakers)
        write_atomically(table, self.output)
        # The fingerprint goes first: if the clean-up is cut short, the parts
        # left behind are never taken for a resume of other settings.
        (self.folder / "fingerprint.json").unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def final_table(tables: list[pa.Table], schema: pa.Schema, metadata: dict,
                speakers: Speakers | None = None) -> pa.Table:
    """The output table from its parts: one schema, sorted by (path, start), with metadata.

    With ``speakers`` (``annotate run --speakers``), its emotions are made
    relative to each speaker (:mod:`annotate.pipeline.speakers`), over every
    recording of the run; the metadata gains ``speaker_adaptation``.
    Local and cluster runs both write it, so they write the same table.
    """
    tables = [t.cast(schema) for t in tables]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    table = table.sort_by([("path", "ascending"), ("start_s", "ascending")])
    if speakers is not None:
        table, summary = speakers.adapt(table)
        metadata = {**metadata, "speaker_adaptation": summary}
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


def failures_table(failures: list[Failure]) -> pa.Table:
    """The failures as a table of the failures schema, sorted by path."""
    ordered = sorted(failures, key=lambda f: (f.path, f.error))
    return pa.table(
        {
            "path": [f.path for f in ordered],
            "error": [f.error for f in ordered],
            "message": [f.message for f in ordered],
        },
        schema=failures_schema(),
    )
