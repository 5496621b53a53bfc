"""The Dask executor: a run's recordings annotated on the workers of a Dask cluster.

The driver (:mod:`annotate.pipeline.run`, as ``annotate run --cluster``
calls it) hands this executor the recordings still to do; it groups them
into shards of ``shard_size`` in discovery order and submits one task per
shard. A worker runs, for each recording of its shard, the same functions
as a local run (:func:`~annotate.prepare.featurize.featurize_recording`,
:meth:`~annotate.pipeline.annotator.Annotator.annotate`) under the driver's
plan (:class:`~annotate.pipeline.plan.RunPlan`: every model on the backend
the driver chose) and returns the shard's rows and failures as a
:class:`~annotate.pipeline.store.Finished`. Only the driver writes the
store, so the output need not be reachable from the workers, and a run
started here resumes locally and the other way round.

Workers need no file system shared with the driver for the models: their
bytes are scattered to every worker once, written to the worker's local
directory and loaded once per worker process (cached by content hash). The
recordings must be readable by the workers at the paths the driver sees.
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
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from annotate._version import __version__
from annotate.audio.discover import Failure, Recording
from annotate.errors import AnnotateError, ModelError, StateError, UsageError
from annotate.modelling.model_folder import folder_hash, read_model_folder
from annotate.modelling.model_set import ModelSet
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import RunPlan
from annotate.pipeline.progress import Progress
from annotate.pipeline.store import Finished
from annotate.prepare.featurize import RecordingFeatures, featurize_recording

INSTALL_HINT = "install annotate[distributed] (pip install 'annotate[distributed]')"


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs for one shard, besides the models: the run's plan whole.

    Attributes:
        recordings: The shard's recordings, in discovery order, at absolute paths.
        plan: The run's plan.
        version: The driver's annotate version (a worker refuses another).
    """

    recordings: tuple[Recording, ...]
    plan: RunPlan
    version: str = __version__


def make_shards(recordings: list[Recording], shard_size: int) -> list[tuple[Recording, ...]]:
    """Consecutive groups of ``shard_size`` recordings."""
    return [tuple(recordings[first : first + shard_size])
            for first in range(0, len(recordings), shard_size)]


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


def annotate_shard(task: ShardTask, models: ModelPayload) -> Finished:
    """Annotate a shard's recordings (the task a worker runs); the driver writes them.

    A bad recording becomes a failure of the result; only a broken model or
    a version mismatch raise.

    Raises:
        StateError: The worker runs another annotate version.
        ModelError: A model cannot be loaded.
    """
    if task.version != __version__:
        raise StateError(f"a Dask worker runs annotate {__version__}, the driver {task.version}; "
                         "install the same version on every worker")
    plan = task.plan
    annotator = worker_annotator(models, plan)
    params = annotator.models.feature_params
    failures: list[Failure] = []
    annotated: list[tuple[str, float]] = []
    tables: list[pa.Table] = []
    pending: list[RecordingFeatures] = []
    pending_segments = 0
    for index, recording in enumerate(task.recordings):
        done = featurize_recording(recording, plan.segments, params, plan.chunk_s, index)
        if isinstance(done, Failure):
            failures.append(done)
            continue
        pending.append(done)
        pending_segments += int(done.encoded.sum())
        annotated.append((done.key, done.duration_s))
        if pending_segments >= plan.batch_size:  # bounds the features held at once
            tables.append(annotator.annotate(pending))
            pending, pending_segments = [], 0
    if pending:
        tables.append(annotator.annotate(pending))
    table = pa.concat_tables(tables) if tables else annotator.schema.empty_table()
    return Finished(table, tuple(annotated), tuple(failures))


# --- on the driver -----------------------------------------------------------------------------


def _dask():
    try:
        from distributed import Client, as_completed
    except ImportError as error:
        raise UsageError(f"--cluster needs Dask ({error}); {INSTALL_HINT}") from None
    return Client, as_completed


class DaskExecutor:
    """Annotates recordings on the workers of the Dask cluster at ``address``.

    Args:
        address: The Dask scheduler (``tcp://host:8786``).
        shard_size: Recordings per task.

    Raises:
        UsageError: Dask is missing, or a bad shard size.
    """

    def __init__(self, address: str, shard_size: int = 32) -> None:
        self.Client, self.as_completed = _dask()
        if shard_size < 1:
            raise UsageError(f"shard size must be at least 1, got {shard_size}")
        self.address = address
        self.shard_size = shard_size
        self.client = None

    def __enter__(self) -> DaskExecutor:
        """Connect to the scheduler.

        Raises:
            UsageError: The scheduler cannot be reached.
        """
        try:
            self.client = self.Client(self.address, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise UsageError(f"cannot reach the Dask scheduler at {self.address}: {error}"
                             ) from None
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def finished(self, todo: list[Recording], plan: RunPlan, models: ModelSet,
                 scratch: Path, progress: Progress) -> Iterator[Finished]:
        """Annotate ``todo`` on the workers; yield each shard as it is done.

        Args:
            todo: The recordings, in discovery order; read by the workers at
                the same (absolute) paths.
            plan: The run's plan; it travels whole to every shard task.
            models: The run's models (their folders are sent to the workers).
            scratch: Unused (the workers keep their own files).
            progress: Receives the executor's messages.

        Raises:
            AnnotateError: The run could not proceed (a worker died, the
                scheduler went away, a model failed on a worker).
        """
        if not todo:
            return
        # Workers start elsewhere: give them paths that do not depend on this cwd.
        recordings = [Recording(r.key, os.path.abspath(r.source), r.speaker) for r in todo]
        tasks = [ShardTask(shard, plan) for shard in make_shards(recordings, self.shard_size)]
        yield from self._run_tasks(tasks, ModelPayload.from_models(models, plan), progress)

    def _run_tasks(self, tasks: list[ShardTask], payload: ModelPayload,
                   progress: Progress) -> Iterator[Finished]:
        """Submit one task per shard and yield their results as they finish."""
        client = self.client
        if not client.scheduler_info()["workers"]:
            progress.message(f"waiting for a worker to join the scheduler "
                             f"{client.scheduler.address}")
            client.wait_for_workers(1)
        # Sent once to each worker now, fetched from a peer by workers that join
        # later, then handed to every task there.
        models = client.scatter(payload, broadcast=True, hash=False)
        futures = [client.submit(annotate_shard, task, models, pure=False,
                                 key=f"annotate-shard-{i}-{uuid.uuid4().hex[:8]}")
                   for i, task in enumerate(tasks)]
        try:
            for future in self.as_completed(futures, loop=client.loop):
                yield future.result()
        except AnnotateError:
            raise
        except Exception as error:  # a worker died, the scheduler went away
            raise AnnotateError(
                f"the run stopped: {type(error).__name__}: {error}. Finished recordings are "
                "kept; run the same command again to resume") from error
        finally:
            # Stop what is still queued (on Ctrl-C, say); closing the client
            # releases it too, so a lost scheduler here changes nothing.
            with contextlib.suppress(Exception):
                client.cancel(futures)
