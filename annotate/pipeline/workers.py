"""How the feature jobs run beside inference: threads of the main process, or worker processes.

:func:`parallel_features` gives the joblib ``Parallel`` and the context to
run it in, :func:`ignore_ctrl_c` starts worker processes deaf to Ctrl-C, and
:func:`stop_quietly` cancels what a stopped run left.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings

from annotate.errors import UsageError, expected_one_of

#: How decoding and features run beside inference: ``threads`` of the main
#: process, or worker ``processes``; ``auto`` takes threads up to
#: :data:`THREADS_UP_TO` jobs. Threads start at once and hand features over
#: without copies; numpy, scipy's FFT, libsndfile and soxr release the GIL,
#: but the Python between their calls does not, which processes avoid on
#: many cores (docs/benchmarks.md).
WORKERS = ("auto", "threads", "processes")
#: On 2 cores, 2 threads computed features as fast as 2 processes (0.61 s
#: against 0.57 s for 30 min of audio) and saved the 0.7 s that worker
#: processes take to start and import.
THREADS_UP_TO = 2


def resolve_workers(workers: str, jobs: int) -> str:
    """``"threads"`` or ``"processes"`` for a :data:`WORKERS` request and a number of jobs.

    Raises:
        UsageError: ``workers`` is not one of :data:`WORKERS`.
    """
    if workers not in WORKERS:
        raise UsageError(expected_one_of("workers", workers, WORKERS))
    if workers == "auto":
        return "threads" if jobs <= THREADS_UP_TO else "processes"
    return workers


def parallel_features(jobs: int, workers: str, **options):
    """A joblib ``Parallel`` for feature tasks, and the context to run it in.

    Threads share the process, so its BLAS (numpy's mel projection) is held
    to one thread for the duration: its own threads would only compete with
    the jobs, and OpenBLAS splits the product differently by its thread
    count, so a run on one job would differ in the last bits from one on
    two, or from a Dask worker (which has one BLAS thread). Worker processes
    get that limit from joblib.
    """
    from joblib import Parallel
    from threadpoolctl import threadpool_limits

    backend = {"threads": "threading", "processes": "loky"}[workers]
    limits = (threadpool_limits(1, user_api="blas") if workers == "threads"
              else contextlib.nullcontext())
    return Parallel(n_jobs=jobs, backend=backend, **options), limits


class Lookahead:
    """Holds feature tasks back so that at most ``limit`` run or wait ahead of the consumer.

    joblib dispatches the next task whenever one finishes, whether or not
    its result was taken: features are computed several times faster than
    the encoder takes them, so a long run's finished features piled up in
    memory (peak RSS 351 MiB for 30 min of audio, 510 MiB for 2 h). Task
    ``ticket`` (counted from 0 in dispatch order) starts only once fewer
    than ``limit`` tasks before it are still unconsumed. Admission follows
    the tickets, so the task the consumer waits for is always admitted, as
    long as joblib sends tasks one at a time (``batch_size=1``): a batch
    returns when its last task is done, and that one could be waiting for
    the first.
    Worker processes cannot share it: :class:`FileLookahead` does the same
    through a file.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._consumed = 0
        self._closed = False
        self._condition = threading.Condition()

    def wait_turn(self, ticket: int) -> bool:
        """Block until task ``ticket`` may start; False if the run stopped meanwhile."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or ticket < self._consumed + self.limit)
            return not self._closed

    def consumed(self) -> None:
        """The consumer took one more result."""
        with self._condition:
            self._consumed += 1
            self._condition.notify_all()

    def close(self) -> None:
        """Release every waiting task (they then skip their work)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class FileLookahead:
    """:class:`Lookahead` for worker processes: the consumer's count lives in a small file.

    Worker processes cannot share a condition variable, so a task polls the
    file (every :data:`POLL_S`) until its ticket is admitted. The file holds
    two integers, the results consumed and whether the run stopped; only the
    main process writes it. It pickles as its path and limit.
    """

    POLL_S = 0.005

    def __init__(self, path, limit: int) -> None:
        import os

        self.path = str(path)
        self.limit = int(limit)
        self._consumed = 0
        self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._write(0, 0)

    def __getstate__(self) -> dict:
        return {"path": self.path, "limit": self.limit}

    def __setstate__(self, state: dict) -> None:
        self.path, self.limit = state["path"], state["limit"]
        self._consumed, self._descriptor = 0, None

    def _write(self, consumed: int, closed: int) -> None:
        import os

        os.pwrite(self._descriptor, int(consumed).to_bytes(8, "little")
                  + int(closed).to_bytes(8, "little"), 0)

    def wait_turn(self, ticket: int) -> bool:
        """Block until task ``ticket`` may start; False if the run stopped (or the file went)."""
        import time

        while True:
            try:
                with open(self.path, "rb") as state:
                    raw = state.read(16)
            except OSError:
                return False
            if len(raw) == 16:
                consumed, closed = int.from_bytes(raw[:8], "little"), raw[8:] != bytes(8)
                if closed:
                    return False
                if ticket < consumed + self.limit:
                    return True
            time.sleep(self.POLL_S)

    def consumed(self) -> None:
        self._consumed += 1
        self._write(self._consumed, 0)

    def close(self) -> None:
        import os

        if self._descriptor is not None:
            self._write(self._consumed, 1)
            os.close(self._descriptor)
            self._descriptor = None


def gated(lookahead: Lookahead | FileLookahead | None, ticket: int, function, *args):
    """``function(*args)`` once ``lookahead`` admits ``ticket`` (at once without one).

    Returns None, without calling it, if the run stopped while it waited.
    """
    if lookahead is not None and not lookahead.wait_turn(ticket):
        return None
    return function(*args)


def stop_quietly(results) -> None:
    """Cancel what is left of a stopped run's tasks (Ctrl-C, an error) without joblib's warning.

    joblib warns that finished tasks went unused, or that running ones were
    cancelled; the user has already been told why the run stopped, and those
    recordings are redone on resume.
    """
    if results is None:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tasks have been successfully executed")
        warnings.filterwarnings("ignore", message=".*tasks which were still being processed")
        results.close()


@contextlib.contextmanager
def ignore_ctrl_c(workers: str):
    """Start worker processes with SIGINT ignored (they inherit it through exec).

    Ctrl-C in a terminal reaches the whole process group: the workers would
    die mid-task with tracebacks of their own while the main process stops
    the run cleanly (exit 130, finished work kept). Only the main process
    should hear it; it is deaf for the moment the workers take to spawn.
    Threads need nothing of this.
    """
    if workers != "processes" or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def silence_loky_cancel_race() -> None:
    """Keep a known joblib race out of the user's terminal (installed once per process).

    When Ctrl-C interrupts a run, joblib cancels the queued tasks while
    loky's manager thread may be handing one of them to a worker; the thread
    then dies with ``KeyError`` in ``add_call_item_to_queue`` and prints a
    traceback. The run stops cleanly all the same (exit 130, finished work
    kept). Only that exception, from that thread, is silenced.
    """
    global _LOKY_HOOK_INSTALLED
    if _LOKY_HOOK_INSTALLED:
        return
    default = threading.excepthook

    def hook(args) -> None:
        thread = args.thread.name if args.thread is not None else ""
        if thread == "ExecutorManagerThread" and args.exc_type is KeyError:
            return
        default(args)

    threading.excepthook = hook
    _LOKY_HOOK_INSTALLED = True


_LOKY_HOOK_INSTALLED = False
