"""Where results go: the finished recordings of a run, resumable, and the final tables.

One store for every run, whichever executor annotates the recordings
(:mod:`annotate.pipeline.local`, :mod:`annotate.pipeline.cluster`): only the
driver (:mod:`annotate.pipeline.run`) writes it. The output is a local path
or an fsspec URL (``s3://bucket/out.parquet``, ``memory://...``); work in
progress lives beside it, in ``<output>.partial/``::

    lock              held (flock) while a run writes, where the file system is
                      local (a mounted one included); object stores have none
    fingerprint.json  settings + model hashes of the run that owns the state
    parts/NNNNNN-<sha256>.parquet
                      finished recordings: their rows, and in the key-value
                      metadata (``annotate-part``) the recordings they hold
                      with their seconds, and the recordings that failed;
                      each part is written whole or not at all, named after
                      a hash of its bytes

A recording is done when a part lists it, annotated or failed: a re-run
with the same fingerprint skips it (:class:`FinishedRecordings`), whether a
local run or a cluster run wrote the part; ``overwrite`` retries the failed
ones. The final tables are written (atomically) only when every recording
is done, and then the partial state is removed. Parts whose bytes no longer
match their name or that cannot be read back (truncated, corrupted) are
deleted and their recordings redone; so are parts found without a
fingerprint (a clean-up that was cut short). A full disk or any other write
error becomes a :class:`StateError` that leaves the finished parts in place
for a resume. fsspec is imported only when a store is opened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from annotate.audio.discover import Failure
from annotate.errors import StateError, UsageError
from annotate.pipeline.centring import Centring
from annotate.pipeline.speakers import Speakers
from annotate.schema import failures_schema

METADATA_KEY = b"annotate"
#: Key of a part's key-value metadata: its recordings, their seconds, its failures.
PART_KEY = b"annotate-part"
#: ``000042-<first 16 hex digits of the part's SHA-256>.parquet``
PART_NAME = re.compile(r"^(\d{6,})-([0-9a-f]{16})\.parquet$")
KEEP = "finished work is kept: free some space and run the same command again to resume"


def failures_path(output: Path) -> Path:
    """``out.parquet`` -> ``out.failures.parquet``."""
    return output.with_name(output.stem + ".failures" + (output.suffix or ".parquet"))


def check_output_path(output: Path) -> None:
    """Fail before any work if a local output cannot be written.

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
        raise UsageError(
            f"the output {output} is a directory; give a file name such as out.parquet")


def read_metadata(path: Path) -> dict:
    """The ``annotate`` key-value metadata of a written table (empty if none)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def filesystem(output: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec file system of ``output`` and the path on it (absolute for local paths).

    Raises:
        UsageError: No file system for the URL (an unknown protocol, or its
            package missing: ``s3://`` needs ``s3fs``).
    """
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(os.fspath(output))
    except (ImportError, ValueError) as error:
        raise UsageError(f"cannot write to {os.fspath(output)}: {error}") from None


def is_local(fs) -> bool:
    """Whether ``fs`` is the local file system (a mounted, shared one included)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def output_names(output: str | os.PathLike) -> tuple[Path | str, Path | str]:
    """The output and its failures table as a run reports them: local paths, or URLs as given."""
    fs, path = filesystem(output)
    if is_local(fs):
        local = Path(path) if os.fspath(output).startswith("file://") else Path(output)
        return local, failures_path(local)
    url = os.fspath(output)
    folder, _, name = url.rpartition("/")
    return url, f"{folder}/{failures_path(PurePosixPath(name)).name}"


def written_output(output: str | os.PathLike) -> dict | None:
    """The metadata of a finished output at ``output`` (``{}`` if unreadable).

    None when there is none, or when partial state beside it says a run is
    under way (a finished output is then being replaced).
    """
    fs, path = filesystem(output)
    if not fs.exists(path) or fs.exists(path + ".partial"):
        return None
    try:
        with fs.open(path, "rb") as handle:
            meta = pq.read_schema(handle).metadata or {}
        return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    except Exception:  # noqa: BLE001 - an unreadable old output is simply replaced
        return {}


@dataclass(frozen=True)
class Finished:
    """Whole recordings an executor finished, as the driver writes them into one part.

    Attributes:
        rows: The rows of the annotated recordings (whole recordings only).
        recordings: ``(key, seconds of audio)`` of each annotated recording.
        failures: The recordings that could not be annotated.
    """

    rows: pa.Table
    recordings: tuple[tuple[str, float], ...] = ()
    failures: tuple[Failure, ...] = ()

    @property
    def audio_s(self) -> float:
        return sum(seconds for _, seconds in self.recordings)


@dataclass
class FinishedRecordings:
    """The recordings a run's parts hold: annotated (with their seconds) or failed.

    Parts are read in the order they were written: a recording a later part
    annotates is no longer a failure.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)

    def __contains__(self, key: str) -> bool:
        return key in self.seconds or key in self.failures

    def __len__(self) -> int:
        return len(self.seconds) + len(self.failures)

    def annotated(self, key: str) -> bool:
        """Whether ``key`` is done with rows (not failed)."""
        return key in self.seconds

    def add(self, recordings, failures) -> None:
        """Take in what a part holds."""
        for key, seconds in recordings:
            self.seconds[key] = float(seconds)
            self.failures.pop(key, None)
        for failure in failures:
            if failure.path not in self.seconds:
                self.failures[failure.path] = failure


def write_error(error: OSError, path: str, local: bool = True) -> StateError:
    """A :class:`StateError` for a failed write, naming the full disk if that is why."""
    folder, name = os.path.dirname(path), os.path.basename(path)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = (f" (the file system mounted at {_mount_point(folder)}: "
                 f"{os.strerror(error.errno)})" if local else "")
        return StateError(f"no space left on the disk holding {folder}{where} while writing "
                          f"{name}; {KEEP}")
    if error.errno == errno.EFBIG:
        return StateError(
            f"cannot write {path}: file too large for the disk holding {folder} or for "
            f"this process's file-size limit (ulimit -f); {KEEP}")
    return StateError(f"cannot write {path}: {error.strerror or error}")


def _mount_point(folder: str) -> str:
    folder = os.path.abspath(folder)
    while not os.path.ismount(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return folder


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def write_table(fs, path: str, table: pa.Table, digest_name: bool = False) -> str:
    """Write a Parquet file so that it appears whole or not at all.

    Local file systems: temp name, fsync, rename. Any other fsspec file
    system: one put of the whole file, which object stores (S3, GCS, Azure)
    make visible atomically.

    Args:
        fs: The file system.
        path: Where; with ``digest_name`` the stem gets ``-<hash of the bytes>``.
        digest_name: Name the file after its content, so that any later
            change to its bytes is seen on reading (:meth:`Store.read_part`).

    Returns:
        The path written.

    Raises:
        StateError: The disk is full or the file cannot be written; nothing
            is left at ``path``.
    """
    def named(digest: str) -> str:
        stem, dot, suffix = path.rpartition(".")
        return f"{stem}-{digest}{dot}{suffix}" if digest_name else path

    if not is_local(fs):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, write_page_checksum=True)
        data = buffer.getvalue()
        path = named(_digest(data))
        try:
            fs.pipe_file(path, data)
        except OSError as error:
            raise write_error(error, path, local=False) from None
        except Exception as error:  # noqa: BLE001 - each store raises its own types
            raise StateError(f"cannot write {path}: {type(error).__name__}: {error}") from None
        return path
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
            if digest_name:
                path = named(hashlib.file_digest(handle, "sha256").hexdigest()[:16])
        os.replace(tmp, path)
        _fsync_dir(folder)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(error, path) from None
    return path


def _write_text(fs, path: str, text: str) -> None:
    if not is_local(fs):
        fs.pipe_file(path, text.encode())
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


class Store:
    """The resumable state of one run and its final tables (see the module docstring).

    Args:
        output: The final table: a path or an fsspec URL.
        fingerprint: Hash of everything that changes the rows.
        overwrite: Discard partial state of other settings, and retry the
            recordings that failed in partial state of these settings.
    """

    def __init__(self, output: str | os.PathLike, fingerprint: str,
                 overwrite: bool = False) -> None:
        self.fs, self.path = filesystem(output)
        self.local = is_local(self.fs)
        self.folder = self.path + ".partial"
        self.parts = self.folder + "/parts"
        self.fingerprint = fingerprint
        self.overwrite = overwrite
        self.finished = FinishedRecordings()
        self.discarded_parts: list[str] = []
        self._part_names: list[str] = []
        self._next_part = 0
        self._lock = None
        self._scratch: Path | None = None

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def failures_path(self) -> str:
        """Where the failures table goes, on the store's file system: beside the output."""
        folder, _, name = self.path.rpartition("/")
        return f"{folder}/{failures_path(PurePosixPath(name)).name}"

    @property
    def scratch(self) -> Path:
        """A local folder for an executor's temporary files, gone with the partial state.

        The ``.partial`` folder itself on a local file system (so that
        spilled features share the output's disk); a temporary folder of
        this machine for an object store.
        """
        if self._scratch is None:
            self._scratch = (Path(self.folder) if self.local
                             else Path(tempfile.mkdtemp(prefix="annotate-scratch-")))
        return self._scratch

    def open(self) -> None:
        """Take the lock, check the fingerprint and collect what is already done.

        Raises:
            StateError: Another run holds the lock, the state belongs to other
                settings, or the state cannot be written (disk full, ...).
        """
        try:
            self.fs.makedirs(self.folder, exist_ok=True)
            if self.local:
                self._lock = _take_lock(self.folder, self.path)
        except OSError as error:
            raise write_error(error, self.folder + "/lock", self.local) from None
        try:
            self._check_fingerprint()
            self._remove_strays()
            self._scan_parts()
        except OSError as error:
            self.close()
            raise write_error(error, self.folder + "/fingerprint.json", self.local) from None
        except BaseException:
            self.close()
            raise

    def _check_fingerprint(self) -> None:
        stamp = self.folder + "/fingerprint.json"
        try:
            previous = json.loads(self.fs.cat_file(stamp))["fingerprint"]
        except (OSError, ValueError, TypeError, KeyError):
            # Parts without a readable fingerprint are of unknown settings (a
            # clean-up cut short removes the fingerprint first): never reuse them.
            previous = None
            self._remove_parts()
        if previous is not None and previous != self.fingerprint:
            # State without finished parts (a run stopped by a refused model,
            # say) holds nothing to lose: it is simply replaced.
            if self._listed_parts() and not self.overwrite:
                raise StateError(
                    f"{self.folder} holds an interrupted run with other settings or models "
                    f"(fingerprint {str(previous)[:12]}, this run {self.fingerprint[:12]}); "
                    "run with the same settings to resume it, or pass --overwrite to start over"
                )
            self._remove_parts()
        _write_text(self.fs, stamp, json.dumps({"fingerprint": self.fingerprint}))
        self.fs.makedirs(self.parts, exist_ok=True)

    def _listed_parts(self) -> list[str]:
        """The names of the files in ``parts/`` ending in ``.parquet`` (fresh, not cached)."""
        self.fs.invalidate_cache(self.parts)
        if not self.fs.exists(self.parts):
            return []
        names = (PurePosixPath(p).name for p in self.fs.ls(self.parts, detail=False))
        return [n for n in names if n.endswith(".parquet") and not n.startswith(".")]

    def _remove_parts(self) -> None:
        if self.fs.exists(self.parts):
            self.fs.rm(self.parts, recursive=True)

    def _remove_strays(self) -> None:
        # Temporary files of a run that was killed while writing; with the
        # lock held no other run can be writing them. Object stores have none.
        if not self.local:
            return
        output, failures = Path(self.path), failures_path(Path(self.path))
        ours = re.compile(rf"^\.({re.escape(output.name)}|{re.escape(failures.name)})\.\d+\.tmp$")
        strays = [*Path(self.parts).glob(".*.tmp"),
                  *(p for p in output.parent.glob(".*.tmp") if ours.match(p.name))]
        for stray in strays:
            stray.unlink(missing_ok=True)

    def _scan_parts(self) -> None:
        numbered = []
        for name in self._listed_parts():
            match = PART_NAME.match(name)
            numbered.append((int(match.group(1)) if match else -1, name))
        numbers = []
        for number, name in sorted(numbered):
            try:
                _, meta = self.read_part(name)
            except Exception:  # noqa: BLE001 - any unreadable part is recomputed
                self.discarded_parts.append(name)
                self.fs.rm(f"{self.parts}/{name}")
                continue
            self.finished.add(meta["recordings"], _failures(meta))
            self._part_names.append(name)
            numbers.append(number)
        self._next_part = max(numbers, default=-1) + 1
        if self.overwrite:
            self.finished.failures.clear()  # --overwrite tries the failed recordings again

    def read_part(self, name: str) -> tuple[pa.Table, dict]:
        """A part's rows and metadata, checked against its name and this run.

        Raises:
            ValueError: The bytes do not hash to the name, or the part is of
                another run or lists other recordings than its rows.
            Exception: Parquet cannot read it back (truncated, corrupted).
        """
        match = PART_NAME.match(name)
        if not match:
            raise ValueError(f"{name} is not named as a part")
        data = self.fs.cat_file(f"{self.parts}/{name}")
        if _digest(data) != match.group(2):
            raise ValueError(f"{name}: the bytes do not match the name")
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        meta = json.loads(table.schema.metadata[PART_KEY])
        keys = {key for key, _ in meta["recordings"]}
        if meta["fingerprint"] != self.fingerprint:
            raise ValueError(f"{name} belongs to another run")
        if not set(table.column("path").unique().to_pylist()) <= keys:
            raise ValueError(f"{name} holds rows of recordings it does not list")
        return table, meta

    def close(self) -> None:
        """Release the lock (the partial state stays until :meth:`finalize`)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if self._scratch is not None and not self.local:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def write_part(self, finished: Finished, failures: tuple[Failure, ...] = ()) -> None:
        """Store finished recordings (whole recordings only), and ``failures`` with them."""
        failures = (*failures, *finished.failures)
        if not finished.recordings and not failures:
            return
        meta = {"fingerprint": self.fingerprint,
                "recordings": [[key, seconds] for key, seconds in finished.recordings],
                "failures": [[f.path, f.error, f.message] for f in failures]}
        table = finished.rows.replace_schema_metadata({PART_KEY: json.dumps(meta).encode()})
        written = write_table(self.fs, f"{self.parts}/{self._next_part:06d}.parquet", table,
                              digest_name=True)
        self._next_part += 1
        self._part_names.append(PurePosixPath(written).name)
        self.finished.add(finished.recordings, failures)

    def finalize(self, schema: pa.Schema, metadata: dict, failures: list[Failure],
                 centring: Centring | None = None, speakers: Speakers | None = None) -> None:
        """Write the failures table, then the output (sorted by path, start), then clean up.

        Args:
            schema: The segments table's schema.
            metadata: The output's metadata.
            failures: Failures of the run not in any part (discovery's).
            centring: Centre the transfer heads' emotions on the run.
            speakers: Adapt the emotions to each speaker (``--speakers``).

        Raises:
            StateError: A table cannot be written, or a part cannot be read back
                (it is deleted: a re-run redoes its recordings).
        """
        everything = [*failures, *self.finished.failures.values()]
        write_table(self.fs, self.failures_path, failures_table(everything))
        tables = [self._read_back(name) for name in self._part_names]
        write_table(self.fs, self.path, final_table(tables, schema, metadata, centring,
                                                          speakers))
        # The fingerprint goes first: if the clean-up is cut short, the parts
        # left behind are never taken for a resume of other settings.
        self.fs.rm(self.folder + "/fingerprint.json")
        self._remove_parts()
        self.close()
        if self.fs.exists(self.folder):
            self.fs.rm(self.folder, recursive=True)

    def _read_back(self, name: str) -> pa.Table:
        try:
            return self.read_part(name)[0]
        except Exception as error:  # noqa: BLE001 - lost or damaged since it was checked
            with contextlib.suppress(OSError):
                self.fs.rm(f"{self.parts}/{name}")
            raise StateError(f"the part {name} cannot be read back ({type(error).__name__}: "
                             f"{error}); run the same command again to redo its recordings"
                             ) from None


def _failures(meta: dict) -> list[Failure]:
    return [Failure(*f) for f in meta["failures"]]


def _take_lock(folder: str, output: str):
    handle = open(os.path.join(folder, "lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateError(f"another annotate run is writing {output} (lock held on {folder}); "
                         "wait for it to finish") from None
    return handle


def final_table(tables: list[pa.Table], schema: pa.Schema, metadata: dict,
                centring: Centring | None = None, speakers: Speakers | None = None) -> pa.Table:
    """The output table from its parts: one schema, sorted by (path, start), with metadata.

    With ``centring``, the emotions of heads trained for transfer are centred
    on the run (:mod:`annotate.pipeline.centring`); the metadata gains
    ``run_centring``. Then, with ``speakers`` (``annotate run --speakers``), its emotions are made
    relative to each speaker (:mod:`annotate.pipeline.speakers`), over every
    recording of the run; the metadata gains ``speaker_adaptation``.
    """
    tables = [t.cast(schema) for t in tables]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    table = table.sort_by([("path", "ascending"), ("start_s", "ascending")])
    if centring is not None:
        table, summary = centring.adapt(table)
        metadata = {**metadata, "run_centring": summary}
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
