"""The whole pipeline as one function: ``run(inputs, output)``.

The driver of every run, local or on a Dask cluster::

    options + models -> plan -> (output complete?) -> discover -> speakers
      -> store (resume: what is finished) -> executor -> finished recordings
      -> store parts, progress -> final tables

The plan (:mod:`annotate.pipeline.plan`) is resolved once; an executor
annotates the recordings still to do and yields them finished
(:class:`~annotate.pipeline.store.Finished`): :class:`~annotate.pipeline.local.LocalExecutor`
on this machine, :class:`~annotate.pipeline.cluster.DaskExecutor` on a
cluster's workers. Only this driver writes the store
(:class:`~annotate.pipeline.store.Store`), by recording, so a run started
by one executor is resumed by the other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from annotate.audio.discover import Failure, discover
from annotate.errors import UsageError
from annotate.modelling.model_set import ModelSet
from annotate.pipeline.centring import Centring
from annotate.pipeline.plan import plan_run
from annotate.pipeline.progress import Progress
from annotate.pipeline.speakers import Speakers
from annotate.pipeline.store import (
    Finished,
    Store,
    check_output_path,
    output_names,
    written_output,
)
from annotate.prepare.featurize import CHUNK_S


@dataclass
class RunResult:
    """What a run did.

    Attributes:
        output: The segments table (a path, or the URL it was given as).
        failures_output: The failures table beside it.
        recordings: Recordings found.
        annotated: Recordings annotated by this run.
        skipped: Recordings annotated by an earlier, interrupted run
            (resumed from its parts).
        failures: Every failure of the table (discovery's, this run's and
            those of the earlier run it resumed).
        audio_s: Seconds of audio annotated by this run.
        already_complete: The output was already there with these settings.
    """

    output: Path | str
    failures_output: Path | str
    recordings: int = 0
    annotated: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    audio_s: float = 0.0
    already_complete: bool = False

    @property
    def failed(self) -> int:
        return len(self.failures)


def is_already_complete(output, previous: str | None, fingerprint: str, overwrite: bool,
                        progress: Progress) -> bool:
    """Decide what to do with a finished output found where a run would write.

    Returns True when it was made with the same settings and models (nothing
    to do); False when ``overwrite`` allows redoing it.

    Raises:
        UsageError: It was made with other settings and ``overwrite`` is off.
    """
    if previous == fingerprint and not overwrite:
        progress.message(f"{output} is already complete with these settings; nothing to do")
        return True
    if not overwrite:
        raise UsageError(f"{output} exists (made with other settings); pass --overwrite")
    return False


def run(
    inputs: list[str | Path],
    output: str | Path,
    *,
    language_model: str | Path | None = None,
    emotion_models: dict[str, str | Path] | None = None,
    languages: list[str] | tuple[str, ...] | None = None,
    language_id: str = "auto",
    window_s: float = 3.0,
    hop_s: float | None = None,
    speech_detector: str = "silero",
    speech_threshold: float | None = None,
    jobs: int | None = None,
    batch_size: int = 256,
    overwrite: bool = False,
    progress: Progress | None = None,
    cluster: str | None = None,
    shard_size: int = 32,
    backend: str | None = None,
    workers: str = "auto",
    speakers: str | None = None,
) -> RunResult:
    """Annotate recordings segment by segment and write the Parquet tables.

    Args:
        inputs: Directories (walked recursively), manifests (CSV, TSV,
            Parquet, JSONL with a ``path`` column) or audio files.
        output: The segments table (``.parquet``): a path, or an fsspec URL
            such as ``s3://bucket/out.parquet``; failures go to
            ``<stem>.failures.parquet`` beside it.
        language_model: A model folder replacing the bundled language model.
        emotion_models: ``{language: folder}`` replacing bundled emotion models.
        languages: Candidate languages; one language means it is known.
        language_id: Where language probabilities come from: ``"head"``,
            ``"cascade"``, ``"whisper"`` or ``"auto"``
            (:func:`annotate.modelling.language_source.choose_language_source`:
            the cascade where the language model records one and knows
            every candidate, else the head; Whisper's language
            identification for codes beyond the head's).
        window_s: Segment length in seconds.
        hop_s: Segment hop in seconds (default: ``window_s``).
        speech_detector: Which segments hold speech: ``"silero"`` (Silero VAD
            and, where it is unsure, the speech head on the backbone's states:
            the default), ``"silero-only"`` (Silero VAD alone) or ``"energy"``
            (the loudness gate of earlier versions; :mod:`annotate.prepare.speech`).
        speech_threshold: For the Silero detectors, the frame probability above which a
            32 ms frame is speech (default 0.5; a segment needs 0.25 s of such
            frames); for ``energy``, a frame level in dBFS (default -45).
        jobs: Parallel decoding and feature jobs (default: all cores).
        batch_size: Segments gathered per inference round; the table does
            not depend on it.
        overwrite: Discard partial state or output made with other settings,
            and retry the recordings that failed in partial state of these.
        progress: Receives progress events.
        cluster: A Dask scheduler's address (``tcp://host:8786``): run on its
            workers instead (:mod:`annotate.pipeline.cluster`; ``jobs`` and
            ``workers`` are then unused).
        shard_size: Recordings per cluster task.
        backend: How the models run: ``"auto"`` (LiteRT for each model whose
            folder has a current export, else Keras), ``"litert"`` or
            ``"keras"``; default ``$ANNOTATE_BACKEND``, else ``auto``. The
            backend of each model is in the output's metadata and fingerprint.
        workers: Whether the jobs are ``"threads"`` or ``"processes"``;
            ``"auto"`` picks (:data:`annotate.pipeline.workers.WORKERS`). The table
            does not depend on it.
        speakers: Make the emotion probabilities relative to each speaker
            (:mod:`annotate.pipeline.speakers`), who is each recording's
            ``"folder"`` or the manifest's ``speaker`` column
            (``"manifest"``); None: as the heads give them.

    Returns:
        What was done; failures are also in the failures table.

    Raises:
        AnnotateError: Bad arguments, models or state (never for a bad recording).
    """
    progress = progress or Progress()
    if cluster is None:
        from annotate.pipeline.local import LocalExecutor

        executor = LocalExecutor(jobs, workers)
    else:
        from annotate.pipeline.cluster import DaskExecutor

        executor = DaskExecutor(cluster, shard_size)
    output_name, failures_name = output_names(output)
    if isinstance(output_name, Path):
        check_output_path(output_name)
    models = ModelSet.load(language_model, emotion_models)
    plan = plan_run(models, languages=languages, language_id=language_id, window_s=window_s,
                    hop_s=hop_s, speech_detector=speech_detector,
                    speech_threshold=speech_threshold,
                    batch_size=batch_size, backend=backend, speakers=speakers, chunk_s=CHUNK_S)
    result = RunResult(output_name, failures_name)

    previous = written_output(output)
    if previous is not None and is_already_complete(
            output_name, previous.get("fingerprint"), plan.fingerprint, overwrite, progress):
        result.already_complete = True
        return result

    recordings, failures = discover(inputs)
    result.recordings = len(recordings)
    adaptation = None if speakers is None else Speakers.of_run(recordings, speakers, models)
    with executor, Store(output, plan.fingerprint, overwrite) as store:
        for name in store.discarded_parts:
            progress.message(f"discarded unreadable part {name}; its recordings are redone")
        done = store.finished
        todo = [r for r in recordings if r.key not in done]
        result.skipped = sum(done.annotated(r.key) for r in recordings)
        progress.start(len(recordings), len(recordings) - len(todo))
        held: list[Failure] = []  # written with the next part: a part per failure is noise
        stream = executor.finished(todo, plan, models, store.scratch, progress)
        with contextlib.closing(stream):
            for finished in stream:
                if finished.recordings:
                    store.write_part(finished, tuple(held))
                    held = []
                else:
                    held.extend(finished.failures)
                progress.advance(len(finished.recordings) + len(finished.failures),
                                 finished.audio_s)
                result.annotated += len(finished.recordings)
                result.audio_s += finished.audio_s
        if held:
            store.write_part(Finished(plan.schema.empty_table()), tuple(held))
        progress.stop()
        result.failures = [*failures, *done.failures.values()]
        store.finalize(plan.schema, plan.metadata, failures, Centring.of_models(models),
                       adaptation)
    return result
