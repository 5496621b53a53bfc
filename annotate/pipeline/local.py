"""The local executor: a run's recordings annotated on this machine.

Feature jobs (joblib threads or processes) decode, segment and compute
features chunk by chunk, a few chunks ahead of inference at most
(:class:`~annotate.pipeline.workers.Lookahead`); a recording's features past
a budget wait on disk (:mod:`annotate.pipeline.spill`) until its last chunk
is back; the main process annotates whole recordings in batches and hands
them to the driver (:mod:`annotate.pipeline.run`) as
:class:`~annotate.pipeline.store.Finished`, which writes them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

from annotate.audio.discover import Failure, Recording
from annotate.errors import AnnotateError
from annotate.modelling.model_set import ModelSet
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import RunPlan
from annotate.pipeline.progress import Progress
from annotate.pipeline.spill import SpillFolder
from annotate.pipeline.store import Finished
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
    ChunkResult,
    RecordingFeatures,
    assemble_recording,
    featurize_chunk,
    plan_chunks,
)

#: At most this long between hand-overs of finished work.
FLUSH_INTERVAL_S = 5.0
#: Features of one recording held in memory while its later chunks are read;
#: past this they wait on disk (a 120 s chunk holds about 3 MB per feature
#: setting), so that memory does not grow with a recording's length.
SPILL_BUDGET_BYTES = 32 * 2**20
#: Feature tasks (chunks of at most the plan's chunk_s) that may run or wait
#: finished ahead of inference, per job: enough to keep the encoder fed, few
#: enough that memory does not grow with the corpus.
LOOKAHEAD_PER_JOB = 4


class LocalExecutor:
    """Annotates recordings on this machine, in feature jobs beside one annotator.

    Args:
        jobs: Parallel decoding and feature jobs (default: all cores).
        workers: ``"threads"``, ``"processes"`` or ``"auto"``
            (:func:`~annotate.pipeline.workers.resolve_workers`).

    Raises:
        UsageError: ``workers`` is not one of those.
    """

    def __init__(self, jobs: int | None = None, workers: str = "auto") -> None:
        self.jobs = jobs or os.cpu_count() or 1
        self.workers = resolve_workers(workers, self.jobs)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def finished(self, todo: list[Recording], plan: RunPlan, models: ModelSet,
                 scratch: Path, progress: Progress) -> Iterator[Finished]:
        """Annotate ``todo`` under ``plan``; yield whole recordings as they are done.

        A recording that cannot be annotated comes as a :class:`Finished`
        of its failure alone, at once; annotated recordings come in batches
        of at least ``plan.batch_size`` speech segments, or after
        :data:`FLUSH_INTERVAL_S`, but the first recording comes alone, as
        soon as it is annotated: the first rows are written within seconds,
        not after a batch (the table does not depend on how it is batched).

        Args:
            todo: The recordings, in discovery order.
            plan: The run's plan.
            models: The run's models.
            scratch: A local folder for spilled features and the lookahead
                file of worker processes.
            progress: Unused here (the driver reports what it writes).

        Raises:
            AnnotateError: A model fails, or a worker process died.
        """
        from joblib import delayed

        jobs, workers = self.jobs, self.workers
        settings, batch_size = plan.segments, plan.batch_size
        annotator = Annotator(plan, models)
        params = annotator.models.feature_params
        empty = annotator.schema.empty_table()
        planning_failures: list[Failure] = []
        silence_loky_cancel_race()

        lookahead = (Lookahead(LOOKAHEAD_PER_JOB * jobs) if workers == "threads"
                     else FileLookahead(scratch / "lookahead", LOOKAHEAD_PER_JOB * jobs))

        def tasks() -> Iterator:
            ticket = 0
            for index, recording in enumerate(todo):
                planned = plan_chunks(index, recording, settings, plan.chunk_s)
                if isinstance(planned, Failure):
                    planning_failures.append(planned)
                    continue
                for chunk in planned:
                    yield delayed(gated)(lookahead, ticket, featurize_chunk, chunk, settings,
                                         params)
                    ticket += 1

        pending: list[RecordingFeatures] = []
        pending_segments = 0
        last_flush = time.monotonic()
        first = True  # the first recording is handed over alone
        open_recording: list[ChunkResult] = []
        spill = SpillFolder(scratch, SPILL_BUDGET_BYTES)
        held_bytes = 0  # of the open recording's features, in memory

        def flush() -> Finished:
            nonlocal pending, pending_segments, last_flush, first
            first = False
            done = Finished(annotator.annotate(pending),
                            tuple((r.key, r.duration_s) for r in pending))
            for recording in pending:
                spill.release(recording.features)
            pending, pending_segments, last_flush = [], 0, time.monotonic()
            return done

        # Enough tasks in flight to keep the workers busy while the models load;
        # each holds at most chunk_s of features.
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
                    while planning_failures:
                        yield Finished(empty, failures=(planning_failures.pop(0),))
                    chunk_result.features, held_bytes = spill.keep(chunk_result.features,
                                                                   held_bytes)
                    open_recording.append(chunk_result)
                    if not chunk_result.last:
                        continue
                    done = assemble_recording(open_recording)
                    if isinstance(done, Failure):
                        for chunk in open_recording:
                            spill.release(chunk.features)
                    open_recording, held_bytes = [], 0
                    if isinstance(done, Failure):
                        yield Finished(empty, failures=(done,))
                        continue
                    pending.append(done)
                    pending_segments += int(done.encoded.sum())
                    if (first or pending_segments >= batch_size
                            or time.monotonic() - last_flush > FLUSH_INTERVAL_S):
                        yield flush()
                while planning_failures:
                    yield Finished(empty, failures=(planning_failures.pop(0),))
                if pending:
                    yield flush()
            except AnnotateError:
                raise
            except Exception as error:  # a worker process died (killed, out of memory)
                raise AnnotateError(
                    f"the run stopped: {type(error).__name__}: {error}. Finished recordings "
                    "are kept; run the same command again to resume"
                ) from error
            finally:
                lookahead.close()
                stop_quietly(results)
                spill.close()
