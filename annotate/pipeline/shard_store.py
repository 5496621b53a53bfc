"""Where a cluster run's results go: shard parts and the final tables, on any fsspec file system.

The counterpart of :mod:`annotate.pipeline.store` for :mod:`annotate.pipeline.cluster`: the
output may be on a local or mounted shared file system or in an object store
(``s3://...`` with ``s3fs``). Work in progress lives beside the output::

    <output>.partial/fingerprint.json   settings + model hashes of the run that owns the state
    <output>.partial/lock               held (flock) by the driver; local file systems only
    <output>.partial/parts/<shard-id>.parquet
                                        a finished shard: its rows, and in the key-value
                                        metadata its keys, counts and failures

A shard's id is a hash of its recordings' keys and the run's fingerprint, so a
re-run with the same settings skips every shard whose part is there and
readable; a part that cannot be read back is deleted and its shard redone.
The fingerprint rules are those of :class:`annotate.pipeline.store.PartialStore`, and
the final table is built as it builds it. fsspec is imported only when used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from annotate.audio.discover import Failure, Recording
from annotate.errors import StateError
from annotate.pipeline.speakers import Speakers
from annotate.pipeline.store import METADATA_KEY, failures_table, final_table, write_atomically

#: Key of a part's key-value metadata that describes its shard.
SHARD_KEY = b"annotate-shard"
SHARED = ("with --cluster the output must be on a file system that the driver and every worker "
          "mount at the same path, or an object store URL such as s3://bucket/out.parquet")


@dataclass(frozen=True)
class Shard:
    """A group of recordings that one task annotates end to end.

    Attributes:
        id: 16 hex digits of the SHA-256 of the run's fingerprint and the keys.
        recordings: The members, in discovery order.
    """

    id: str
    recordings: tuple[Recording, ...]

    @property
    def keys(self) -> list[str]:
        """The members' keys (the ``path`` column), in order."""
        return [r.key for r in self.recordings]


def make_shards(recordings: list[Recording], shard_size: int, fingerprint: str) -> list[Shard]:
    """Consecutive groups of ``shard_size`` recordings, named after their keys and the run."""
    shards = []
    for first in range(0, len(recordings), shard_size):
        members = tuple(recordings[first : first + shard_size])
        named = json.dumps([fingerprint, [r.key for r in members]]).encode()
        shards.append(Shard(hashlib.sha256(named).hexdigest()[:16], members))
    return shards


@dataclass
class ShardResult:
    """What a shard gave: counts and failures (its rows are in its part)."""

    shard_id: str
    annotated: int = 0
    audio_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def to_json(self) -> dict:
        """As stored in the part's metadata."""
        return {"shard": self.shard_id, "annotated": self.annotated, "audio_s": self.audio_s,
                "failures": [[f.path, f.error, f.message] for f in self.failures]}

    @classmethod
    def from_json(cls, raw: dict) -> ShardResult:
        """Read back what :meth:`to_json` stored."""
        return cls(raw["shard"], int(raw["annotated"]), float(raw["audio_s"]),
                   [Failure(*f) for f in raw["failures"]])


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path on it (absolute for local paths)."""
    import fsspec.core

    return fsspec.core.url_to_fs(url)


def is_local(fs) -> bool:
    """Whether ``fs`` is the local (or a mounted, shared) file system."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def write_table(url: str, table: pa.Table) -> None:
    """Write a Parquet file so that it appears whole or not at all.

    Local (and shared, mounted) file systems: temp name, fsync, rename. Any
    other fsspec file system: one put of the whole file, which object stores
    (S3, GCS, Azure) make visible atomically.

    Raises:
        StateError: The file cannot be written.
    """
    fs, path = filesystem(url)
    if is_local(fs):
        write_atomically(table, Path(path))
        return
    buffer = io.BytesIO()
    pq.write_table(table, buffer, write_page_checksum=True)
    try:
        fs.pipe_file(path, buffer.getvalue())
    except Exception as error:  # noqa: BLE001 - each store raises its own types
        raise StateError(f"cannot write {url}: {type(error).__name__}: {error}") from None


def write_part(parts_url: str, shard: Shard, fingerprint: str, table: pa.Table,
               result: ShardResult) -> None:
    """Write a finished shard's rows, with its keys, counts and failures in the metadata.

    Raises:
        StateError: The parts folder is not there (the output is not on a
            file system this worker shares), or the part cannot be written.
    """
    fs, parts = filesystem(parts_url)
    if is_local(fs) and not os.path.isdir(parts):
        raise StateError(f"{parts} does not exist on the worker {socket.gethostname()}: {SHARED}")
    meta = {"fingerprint": fingerprint, "keys": shard.keys, **result.to_json()}
    table = table.replace_schema_metadata({SHARD_KEY: json.dumps(meta).encode()})
    write_table(f"{parts_url}/{shard.id}.parquet", table)


def read_table(fs, path: str) -> pa.Table:
    """Read a Parquet file through ``fs``, verifying the page checksums."""
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, page_checksum_verification=True)


def _write_text(fs, path: str, text: str) -> None:
    if is_local(fs):
        tmp = f"{path}.{os.getpid()}.tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, text.encode())


def output_fingerprint(fs, path: str) -> str | None:
    """The fingerprint of a written output (None if unreadable)."""
    try:
        with fs.open(path, "rb") as handle:
            meta = pq.read_schema(handle).metadata or {}
        return json.loads(meta[METADATA_KEY]).get("fingerprint")
    except Exception:  # noqa: BLE001 - an unreadable old output is simply replaced
        return None


class ShardStore:
    """The resumable state of a cluster run, on any fsspec file system.

    Args:
        fs: The file system of the output.
        output: The output's path on ``fs``.
        fingerprint: Hash of everything that changes the rows.
        overwrite: Discard partial state of other settings.
    """

    def __init__(self, fs, output: str, fingerprint: str, overwrite: bool = False) -> None:
        self.fs = fs
        self.output = output
        self.folder = output + ".partial"
        self.parts = self.folder + "/parts"
        self.parts_url = fs.unstrip_protocol(self.parts) if not is_local(fs) else self.parts
        self.fingerprint = fingerprint
        self.overwrite = overwrite
        self.discarded_parts: list[str] = []
        self._lock = None

    def __enter__(self) -> ShardStore:
        try:
            self.fs.makedirs(self.folder, exist_ok=True)
            if is_local(self.fs):
                self._lock = _take_lock(self.folder, self.output)
            self._check_fingerprint()
        except OSError as error:
            self.close()
            raise StateError(f"cannot write {self.folder}: {error}") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock (the partial state stays until :meth:`finalize`)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _check_fingerprint(self) -> None:
        # The rules of annotate.pipeline.store.PartialStore: parts of unknown settings
        # are never reused; parts of other settings need --overwrite.
        stamp = self.folder + "/fingerprint.json"
        try:
            previous = json.loads(self.fs.cat_file(stamp))["fingerprint"]
        except (OSError, ValueError, TypeError, KeyError):
            previous = None
            self._remove_parts()
        if previous is not None and previous != self.fingerprint:
            has_parts = self.fs.exists(self.parts) and bool(self.fs.glob(self.parts + "/*.parquet"))
            if has_parts and not self.overwrite:
                raise StateError(
                    f"{self.folder} holds an interrupted run with other settings or models "
                    f"(fingerprint {str(previous)[:12]}, this run {self.fingerprint[:12]}); "
                    "run with the same settings to resume it, or pass --overwrite to start over")
            self._remove_parts()
        _write_text(self.fs, stamp, json.dumps({"fingerprint": self.fingerprint}))
        self.fs.makedirs(self.parts, exist_ok=True)

    def _remove_parts(self) -> None:
        if self.fs.exists(self.parts):
            self.fs.rm(self.parts, recursive=True)

    def check_part(self, shard_id: str) -> None:
        """Fail early if a part a worker wrote is not visible here.

        Raises:
            StateError: The part is missing (the workers write elsewhere).
        """
        # Listings cached by an object-store client predate the workers' writes.
        self.fs.invalidate_cache(self.parts)
        if not self.fs.exists(f"{self.parts}/{shard_id}.parquet"):
            raise StateError(f"a worker wrote {shard_id}.parquet, but {self.parts} on the driver "
                             f"does not hold it: {SHARED}")

    def finished(self, shards: list[Shard]) -> dict[str, ShardResult]:
        """The shards whose part is there and readable; unreadable parts are deleted."""
        present = {PurePosixPath(p).name for p in self.fs.glob(self.parts + "/*.parquet")}
        done = {}
        for shard in shards:
            name = f"{shard.id}.parquet"
            if name not in present:
                continue
            try:
                table = read_table(self.fs, f"{self.parts}/{name}")
                meta = json.loads(table.schema.metadata[SHARD_KEY])
                if (meta["fingerprint"] != self.fingerprint or meta["keys"] != shard.keys
                        or not set(table.column("path").to_pylist()) <= set(shard.keys)):
                    raise ValueError("the part belongs to another shard")
                done[shard.id] = ShardResult.from_json(meta)
            except Exception:  # noqa: BLE001 - any unreadable part is recomputed
                self.discarded_parts.append(name)
                self.fs.rm(f"{self.parts}/{name}")
        return done

    def finalize(self, shards: list[Shard], schema: pa.Schema, metadata: dict,
                 failures: list[Failure], failures_url: str,
                 speakers: Speakers | None = None) -> None:
        """Write the failures table, then the output from the shards' parts, then clean up."""
        output_url = self.output if is_local(self.fs) else self.fs.unstrip_protocol(self.output)
        write_table(failures_url, failures_table(failures))
        self.fs.invalidate_cache(self.parts)
        tables = [self._read_part(shard) for shard in shards]
        write_table(output_url, final_table(tables, schema, metadata, speakers))
        # The fingerprint goes first: if the clean-up is cut short, the parts
        # left behind are never taken for a resume of other settings.
        self.fs.rm(self.folder + "/fingerprint.json")
        self._remove_parts()
        self.close()
        if self.fs.exists(self.folder):
            self.fs.rm(self.folder, recursive=True)


    def _read_part(self, shard: Shard) -> pa.Table:
        path = f"{self.parts}/{shard.id}.parquet"
        try:
            return read_table(self.fs, path)
        except Exception as error:  # noqa: BLE001 - lost or damaged since it was checked
            with contextlib.suppress(OSError):
                self.fs.rm(path)
            raise StateError(f"the part of shard {shard.id} cannot be read back "
                             f"({type(error).__name__}: {error}); run the same command again "
                             "to redo that shard") from None


def _take_lock(folder: str, output: str):
    handle = open(os.path.join(folder, "lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateError(f"another annotate run is writing {output} (lock held on {folder}); "
                         "wait for it to finish") from None
    return handle
