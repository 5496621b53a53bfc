"""The pipeline on a Dask cluster: shards of recordings, each annotated end to end on a worker.

The driver (the process that calls :func:`run_on_cluster`, as ``annotate run
--cluster`` does) discovers the recordings, groups them into shards in
discovery order and submits one task per shard. A worker runs, for each
recording of its shard, the same functions as a local run
(:func:`~annotate.prepare.featurize.featurize_recording`,
:meth:`~annotate.pipeline.annotator.Annotator.annotate`) under the driver's
plan (:class:`~annotate.pipeline.plan.RunPlan`: every model on the backend
the driver chose), writes the shard's rows as one
part (:mod:`annotate.pipeline.shard_store`) and returns its failures and counts. The
driver then writes the tables as a local run does, so both give the same table.

Workers need no file system shared with the driver for the models: their
bytes are scattered to every worker once, written to the worker's local
directory and loaded once per worker process (cached by content hash). The
recordings must be readable by the workers at the paths the driver sees, and
the output must be on a shared file system or in an object store.
Dask is imported only here, and only when a run asks for a cluster (it is
the ``distributed`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import pyarrow as pa

from annotate._version import __version__
from annotate.audio.discover import Failure, Recording, discover
from annotate.errors import AnnotateError, ModelError, StateError, UsageError
from annotate.modelling.model_folder import folder_hash, read_model_folder
from annotate.modelling.model_set import ModelSet
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import RunPlan
from annotate.pipeline.progress import Progress
from annotate.pipeline.result import RunResult, is_already_complete
from annotate.pipeline.shard_store import (
    Shard,
    ShardResult,
    ShardStore,
    filesystem,
    is_local,
    make_shards,
    output_fingerprint,
    write_part,
)
from annotate.pipeline.speakers import Speakers
from annotate.pipeline.store import check_output_path, failures_path
from annotate.prepare.featurize import RecordingFeatures, featurize_recording

INSTALL_HINT = "install annotate[distributed] (pip install 'annotate[distributed]')"


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs for one shard, besides the models: the run's plan whole."""

    shard: Shard
    plan: RunPlan
    parts_url: str
    version: str = __version__


@dataclass(frozen=True)
class ModelPayload:
    """The run's model folders as bytes, so that workers need no shared file system.

    Attributes:
        files: Per content hash (``sha256:<hex>``), ``{relative path: bytes}``
            of the model folder.
        hashes: The content hash of each distinct model, in the order of
            :attr:`ModelSet.specs` (the language model first).
        emotion: ``(language, index into hashes)`` for each emotion route.
        backbones: Per backbone name, its content hash and ``{relative path:
            bytes}``: the driver's backbone folders travel too, so that a
            worker's heads read the same encoder as the driver's (not the
            one its own installation bundles).
    """

    files: dict[str, dict[str, bytes]]
    hashes: tuple[str, ...]
    emotion: tuple[tuple[str, int], ...]
    backbones: tuple[tuple[str, str, dict[str, bytes]], ...] = ()

    @classmethod
    def from_models(cls, models: ModelSet, plan: RunPlan) -> ModelPayload:
        """Read the folders of ``models``, named by the content hashes ``plan`` records."""
        specs = models.specs
        hashes = tuple(entry["hash"] for entry in plan.metadata["models"])
        files = {digest: _folder_files(Path(spec.folder))
                 for spec, digest in zip(specs, hashes, strict=True)}
        index = {id(spec): i for i, spec in enumerate(specs)}
        emotion = tuple((code, index[id(spec)]) for code, spec in models.emotion.items())
        known = {name: digest for name, digest, _ in plan.backbone_backends}
        backbones = tuple((name, known[name], _folder_files(Path(spec.folder)))
                          for name, spec in models.backbones.items())
        return cls(files, hashes, emotion, backbones)

    @property
    def key(self) -> tuple:
        """Identifies the models and routes (not the bytes, which the hashes name)."""
        return (self.hashes, self.emotion,
                tuple((name, digest) for name, digest, _ in self.backbones))

    def materialise(self, root: Path) -> ModelSet:
        """Write each folder once under ``root/<hex>`` and read the model set back.

        Raises:
            ModelError: A written folder does not hash to its content hash.
        """
        if self.backbones:
            # Heads find their backbone beside them: one folder per set of backbones.
            together = hashlib.sha256("".join(d for _, d, _ in self.backbones).encode())
            root = root / f"with-{together.hexdigest()[:16]}"
            root.mkdir(parents=True, exist_ok=True)
            for name, digest, files in self.backbones:
                _materialise_folder(root, digest, files, name)
        folders = {digest: _materialise_folder(root, digest, files)
                   for digest, files in self.files.items()}
        # One spec per distinct model, as on the driver: the annotator groups
        # recordings by model identity.
        specs = [read_model_folder(folders[digest]) for digest in self.hashes]
        return ModelSet(specs[0], {code: specs[i] for code, i in self.emotion})


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _materialise_folder(root: Path, digest: str, files: dict[str, bytes],
                        name: str | None = None) -> Path:
    folder = root / (name or digest.split(":", 1)[-1])
    if not folder.is_dir():
        tmp = root / f".{folder.name}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process of this machine was faster
            shutil.rmtree(tmp, ignore_errors=True)
    if folder_hash(folder) != digest:
        raise ModelError(f"the model folder written to {folder} does not hash to {digest}")
    return folder


# --- on the workers ---------------------------------------------------------------------------

_annotators: dict[tuple, Annotator] = {}
_annotators_lock = threading.Lock()


def worker_annotator(models: ModelPayload, plan: RunPlan) -> Annotator:
    """The loaded annotator of this worker process for these models and plan (loaded once).

    Every model and backbone runs on the backend the driver's plan chose,
    whatever this worker's environment would choose.
    """
    key = (models.key, plan.fingerprint)
    with _annotators_lock:
        if key not in _annotators:
            root = _worker_directory() / "annotate-models"
            root.mkdir(parents=True, exist_ok=True)
            _annotators[key] = Annotator(plan, models.materialise(root)).load()
        return _annotators[key]


def _worker_directory() -> Path:
    try:
        from distributed import get_worker

        return Path(get_worker().local_directory)
    except (ImportError, ValueError):  # called outside a Dask worker
        return Path(tempfile.gettempdir())


def annotate_shard(task: ShardTask, models: ModelPayload) -> ShardResult:
    """Annotate a shard's recordings and write its part (the task a worker runs).

    A bad recording becomes a failure of the result; only a broken model,
    an unwritable output or a version mismatch raise.

    Raises:
        StateError: The worker runs another annotate version, or the part
            cannot be written.
        ModelError: A model cannot be loaded.
    """
    if task.version != __version__:
        raise StateError(f"a Dask worker runs annotate {__version__}, the driver {task.version}; "
                         "install the same version on every worker")
    plan = task.plan
    annotator = worker_annotator(models, plan)
    params = annotator.models.feature_params
    result = ShardResult(task.shard.id)
    tables: list[pa.Table] = []
    pending: list[RecordingFeatures] = []
    pending_segments = 0
    for index, recording in enumerate(task.shard.recordings):
        done = featurize_recording(recording, plan.segments, params, plan.chunk_s, index)
        if isinstance(done, Failure):
            result.failures.append(done)
            continue
        pending.append(done)
        pending_segments += int(done.speech.sum())
        result.annotated += 1
        result.audio_s += done.duration_s
        if pending_segments >= plan.batch_size:  # bounds the features held at once
            tables.append(annotator.annotate(pending))
            pending, pending_segments = [], 0
    if pending:
        tables.append(annotator.annotate(pending))
    table = pa.concat_tables(tables) if tables else annotator.schema.empty_table()
    write_part(task.parts_url, task.shard, plan.fingerprint, table, result)
    return result


# --- on the driver -----------------------------------------------------------------------------


def _dask():
    try:
        import fsspec  # noqa: F401
        from distributed import Client, as_completed
    except ImportError as error:
        raise UsageError(f"--cluster needs Dask ({error}); {INSTALL_HINT}") from None
    return Client, as_completed


def run_on_cluster(
    inputs: list[str | Path],
    output: str | Path,
    plan: RunPlan,
    models: ModelSet,
    *,
    address: str,
    shard_size: int = 32,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Annotate ``inputs`` on the Dask cluster at ``address`` and write the tables.

    :func:`annotate.pipeline.local.run` calls this with the plan it has
    resolved and the models it was resolved from; the tables equal a local run's.

    Args:
        inputs: As for :func:`annotate.pipeline.local.run`; read by the driver, and
            the recordings by the workers at the same (absolute) paths.
        output: The segments table: a path or an fsspec URL (``s3://b/out.parquet``)
            that the driver and every worker can write.
        plan: The run's plan; it travels whole to every shard task.
        models: The run's models (their folders are sent to the workers).
        address: The Dask scheduler (``tcp://host:8786``).
        shard_size: Recordings per task.
        overwrite: Discard partial state or an output made with other settings.
        progress: Receives progress events, per finished shard.

    Returns:
        What was done; ``annotated`` and ``audio_s`` count this run's shards,
        ``skipped`` the annotated recordings of shards found finished.

    Raises:
        UsageError: Dask is missing, the scheduler cannot be reached, or a bad
            output or shard size.
        AnnotateError: The run could not proceed (finished shards are kept).
    """
    Client, as_completed = _dask()
    progress = progress or Progress()
    if shard_size < 1:
        raise UsageError(f"shard size must be at least 1, got {shard_size}")
    fs, path = filesystem(os.fspath(output))
    local = is_local(fs)
    if local:
        check_output_path(Path(path))
    url = path if local else os.fspath(output)
    failures_url = _sibling(url, failures_path(PurePosixPath(path)).name)
    result = RunResult(Path(url) if local else url, Path(failures_url) if local else failures_url)
    fingerprint = plan.fingerprint

    if fs.exists(path) and not fs.exists(path + ".partial"):
        previous = output_fingerprint(fs, path)
        if is_already_complete(url, previous, fingerprint, overwrite, progress):
            result.already_complete = True
            return result

    recordings, failures = discover(inputs)
    adaptation = (None if plan.speakers is None
                  else Speakers.of_run(recordings, plan.speakers, models))
    # Workers start elsewhere: give them paths that do not depend on this cwd.
    recordings = [Recording(r.key, os.path.abspath(r.source)) for r in recordings]
    result.recordings = len(recordings)
    shards = make_shards(recordings, shard_size, fingerprint)
    with _connect(Client, address) as client, ShardStore(fs, path, fingerprint, overwrite) as store:
        finished = store.finished(shards)
        for name in store.discarded_parts:
            progress.message(f"discarded unreadable part {name}; its shard is redone")
        todo = [s for s in shards if s.id not in finished]
        result.skipped = sum(r.annotated for r in finished.values())
        progress.start(len(recordings), len(recordings) - sum(len(s.recordings) for s in todo))
        if todo:
            payload = ModelPayload.from_models(models, plan)
            tasks = [ShardTask(shard, plan, store.parts_url) for shard in todo]
            for shard_result in _run_tasks(client, as_completed, tasks, payload, progress):
                store.check_part(shard_result.shard_id)
                finished[shard_result.shard_id] = shard_result
                result.annotated += shard_result.annotated
                result.audio_s += shard_result.audio_s
        progress.stop()
        for shard in shards:
            failures.extend(finished[shard.id].failures)
        result.failures = failures
        store.finalize(shards, plan.schema, plan.metadata, failures, failures_url, adaptation)
    return result


def _connect(Client, address: str):
    try:
        return Client(address, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {error}") from None


def _run_tasks(client, as_completed, tasks, payload, progress) -> Iterator[ShardResult]:
    """Submit one task per shard and yield their results as they finish."""
    if not client.scheduler_info()["workers"]:
        progress.message(f"waiting for a worker to join the scheduler {client.scheduler.address}")
        client.wait_for_workers(1)
    # Sent once to each worker now, fetched from a peer by workers that join
    # later, then handed to every task there.
    models = client.scatter(payload, broadcast=True, hash=False)
    futures = [client.submit(annotate_shard, task, models, pure=False,
                             key=f"annotate-shard-{task.shard.id}-{uuid.uuid4().hex[:8]}")
               for task in tasks]
    sizes = {future: len(task.shard.recordings)
             for future, task in zip(futures, tasks, strict=True)}
    try:
        for future in as_completed(futures, loop=client.loop):
            shard_result = future.result()
            progress.advance(sizes[future], shard_result.audio_s)
            yield shard_result
    except AnnotateError:
        raise
    except Exception as error:  # a worker died, the scheduler went away
        raise AnnotateError(
            f"the run stopped: {type(error).__name__}: {error}. Finished shards are kept; "
            "run the same command again to resume") from error
    finally:
        # Stop what is still queued (on Ctrl-C, say); closing the client
        # releases it too, so a lost scheduler here changes nothing.
        with contextlib.suppress(Exception):
            client.cancel(futures)


def _sibling(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name if "/" in url else name
