"""The whole pipeline as one function: ``run(inputs, output)``.

discover -> plan chunks -> (joblib threads or processes) decode, segment, features ->
batched inference -> rows -> resumable store -> final Parquet tables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

from annotate.audio.discover import Failure, discover
from annotate.errors import AnnotateError
from annotate.modelling.model_set import ModelSet
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import RunPlan, plan_run
from annotate.pipeline.progress import Progress
from annotate.pipeline.result import RunResult, is_already_complete
from annotate.pipeline.speakers import Speakers
from annotate.pipeline.spill import SpillFolder
from annotate.pipeline.store import PartialStore, check_output_path, failures_path, read_metadata
from annotate.pipeline.workers import (
    FileLookahead,
    Lookahead,
    gated,
    ignore_ctrl_c,
    parallel_features,
    resolve_workers,
    silence_loky_cancel_race,
    stop_quietly,
)
from annotate.prepare.featurize import (
    CHUNK_S,
    ChunkResult,
    RecordingFeatures,
    assemble_recording,
    featurize_chunk,
    plan_chunks,
)

#: At most this long between writes of finished work.
FLUSH_INTERVAL_S = 5.0
#: Features of one recording held in memory while its later chunks are read;
#: past this they wait on disk (a 120 s chunk holds about 3 MB per feature
#: setting), so that memory does not grow with a recording's length.
SPILL_BUDGET_BYTES = 32 * 2**20
#: Feature tasks (chunks of at most CHUNK_S) that may run or wait finished
#: ahead of inference, per job: enough to keep the encoder fed, few enough
#: that memory does not grow with the corpus.
LOOKAHEAD_PER_JOB = 4


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
        output: The segments table (``.parquet``); failures go to
            ``<stem>.failures.parquet`` beside it.
        language_model: A model folder replacing the bundled language model.
        emotion_models: ``{language: folder}`` replacing bundled emotion models.
        languages: Candidate languages; one language means it is known.
        language_id: Where language probabilities come from: ``"head"``,
            ``"cascade"``, ``"whisper"`` or ``"auto"``
            (:meth:`annotate.modelling.model_set.ModelSet.choose_language_id`:
            the cascade where the language model records one and knows
            every candidate, else the head; Whisper's language
            identification for codes beyond the head's).
        window_s: Segment length in seconds.
        hop_s: Segment hop in seconds (default: ``window_s``).
        speech_detector: Which segments hold speech: ``"silero"`` (Silero VAD,
            the default) or ``"energy"`` (the loudness gate of earlier
            versions; :mod:`annotate.prepare.speech`).
        speech_threshold: For ``silero``, the frame probability above which a
            32 ms frame is speech (default 0.5; a segment needs 0.25 s of such
            frames); for ``energy``, a frame level in dBFS (default -45).
        jobs: Parallel decoding and feature jobs (default: all cores).
        batch_size: Segments gathered per inference round; the table does
            not depend on it.
        overwrite: Discard partial state or output made with other settings.
        progress: Receives progress events.
        cluster: A Dask scheduler's address (``tcp://host:8786``): run on its
            workers instead (:mod:`annotate.pipeline.cluster`; ``jobs`` is then unused
            and ``output`` may be an fsspec URL such as ``s3://bucket/out.parquet``).
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
    jobs = jobs or os.cpu_count() or 1
    workers = resolve_workers(workers, jobs)
    if cluster is None:  # annotate.pipeline.cluster checks the output, which may be a URL
        check_output_path(Path(output))
    models = ModelSet.load(language_model, emotion_models)
    plan = plan_run(models, languages=languages, language_id=language_id, window_s=window_s,
                    hop_s=hop_s, speech_detector=speech_detector,
                    speech_threshold=speech_threshold,
                    batch_size=batch_size, backend=backend, speakers=speakers, chunk_s=CHUNK_S)
    if cluster is not None:
        from annotate.pipeline.cluster import run_on_cluster

        return run_on_cluster(inputs, output, plan, models, address=cluster,
                              shard_size=shard_size, overwrite=overwrite, progress=progress)
    output = Path(output)
    result = RunResult(output, failures_path(output))

    if output.exists() and not output.with_name(output.name + ".partial").exists():
        previous = _safe_metadata(output).get("fingerprint")
        if is_already_complete(output, previous, plan.fingerprint, overwrite, progress):
            result.already_complete = True
            return result

    recordings, failures = discover(inputs)
    result.recordings = len(recordings)
    adaptation = None if speakers is None else Speakers.of_run(recordings, speakers, models)
    annotator = Annotator(plan, models)
    with PartialStore(output, plan.fingerprint, overwrite) as store:
        for name in store.discarded_parts:
            progress.message(f"discarded unreadable part {name}; its recordings are redone")
        todo = [r for r in recordings if not store.contains(r.key)]
        result.skipped = len(recordings) - len(todo)
        progress.start(len(recordings), result.skipped)
        _process(todo, plan, annotator, store, jobs, workers, failures, progress, result)
        progress.stop()
        result.failures = failures
        store.finalize(plan.schema, plan.metadata, failures, adaptation)
    return result


def _process(todo, plan: RunPlan, annotator: Annotator, store: PartialStore, jobs: int,
             workers: str, failures: list[Failure], progress: Progress, result: RunResult) -> None:
    from joblib import delayed

    settings, batch_size = plan.segments, plan.batch_size
    params = annotator.models.feature_params
    planning_failures: list[Failure] = []
    silence_loky_cancel_race()

    lookahead = (Lookahead(LOOKAHEAD_PER_JOB * jobs) if workers == "threads"
                 else FileLookahead(store.folder / "lookahead", LOOKAHEAD_PER_JOB * jobs))

    def tasks() -> Iterator:
        ticket = 0
        for index, recording in enumerate(todo):
            planned = plan_chunks(index, recording, settings, plan.chunk_s)
            if isinstance(planned, Failure):
                planning_failures.append(planned)
                continue
            for chunk in planned:
                yield delayed(gated)(lookahead, ticket, featurize_chunk, chunk, settings, params)
                ticket += 1

    pending: list[RecordingFeatures] = []
    pending_segments = 0
    last_flush = time.monotonic()
    open_recording: list[ChunkResult] = []
    spill = SpillFolder(store.folder, SPILL_BUDGET_BYTES)
    held_bytes = 0  # of the open recording's features, in memory

    def flush() -> None:
        nonlocal pending, pending_segments, last_flush
        if pending:
            store.write_part(annotator.annotate(pending))
            progress.advance(len(pending), sum(r.duration_s for r in pending))
            result.annotated += len(pending)
            result.audio_s += sum(r.duration_s for r in pending)
            for recording in pending:
                spill.release(recording.features)
        pending, pending_segments, last_flush = [], 0, time.monotonic()

    def drain_planning_failures() -> None:
        while planning_failures:
            failures.append(planning_failures.pop(0))
            progress.advance(1, 0.0)

    # Enough tasks in flight to keep the workers busy while the models load;
    # each holds at most CHUNK_S of features.
    parallel, limits = parallel_features(jobs, workers, return_as="generator",
                                         pre_dispatch="8*n_jobs", batch_size=1)
    results = None
    with limits:
        try:
            with ignore_ctrl_c(workers):
                results = parallel(tasks())
            # A Keras model takes seconds to load (TensorFlow's import): load the
            # models while the workers already decode.
            annotator.load()
            for chunk_result in results:
                lookahead.consumed()
                drain_planning_failures()
                chunk_result.features, held_bytes = spill.keep(chunk_result.features, held_bytes)
                open_recording.append(chunk_result)
                if not chunk_result.last:
                    continue
                done = assemble_recording(open_recording)
                if isinstance(done, Failure):
                    for chunk in open_recording:
                        spill.release(chunk.features)
                open_recording, held_bytes = [], 0
                if isinstance(done, Failure):
                    failures.append(done)
                    progress.advance(1, 0.0)
                    continue
                pending.append(done)
                pending_segments += int(done.speech.sum())
                if (pending_segments >= batch_size
                        or time.monotonic() - last_flush > FLUSH_INTERVAL_S):
                    flush()
            drain_planning_failures()
            flush()
        except AnnotateError:
            raise
        except Exception as error:  # a worker process died (killed, out of memory)
            raise AnnotateError(
                f"the run stopped: {type(error).__name__}: {error}. Finished recordings are kept; "
                "run the same command again to resume"
            ) from error
        finally:
            lookahead.close()
            stop_quietly(results)
            spill.close()


def _safe_metadata(path: Path) -> dict:
    try:
        return read_metadata(path)
    except Exception:  # noqa: BLE001 - an unreadable old output is simply replaced
        return {}
