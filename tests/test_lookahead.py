"""Feature threads stay at most a few tasks ahead of inference, whatever the corpus size."""

from __future__ import annotations

import threading
import time

from joblib import Parallel, delayed

import annotate.pipeline.local as local
from annotate.pipeline.workers import Lookahead, gated


def test_tasks_wait_for_the_consumer_and_come_back_in_order():
    lookahead = Lookahead(3)
    started, lock = [], threading.Lock()
    consumed = [0]
    ahead = []

    def work(i):
        with lock:
            started.append(i)
            ahead.append(len(started) - consumed[0])
        return i

    results = Parallel(n_jobs=2, backend="threading", return_as="generator", batch_size=1)(
        delayed(gated)(lookahead, i, work, i) for i in range(40))
    got = []
    for value in results:
        time.sleep(0.002)  # a slow consumer: the encoder
        got.append(value)
        with lock:
            consumed[0] += 1
        lookahead.consumed()
    assert got == list(range(40))
    assert max(ahead) <= 3
    # Without the gate the producer runs away from the same consumer.
    started.clear(), ahead.clear()
    consumed[0] = 0
    results = Parallel(n_jobs=2, backend="threading", return_as="generator", batch_size=1)(
        delayed(gated)(None, i, work, i) for i in range(40))
    for _ in results:
        time.sleep(0.002)
        consumed[0] += 1
    assert max(ahead) > 3


def test_a_closed_lookahead_releases_waiting_tasks_without_running_them():
    lookahead = Lookahead(1)
    ran = []
    done = []
    thread = threading.Thread(target=lambda: done.append(gated(lookahead, 5, ran.append, 1)))
    thread.start()
    time.sleep(0.05)
    assert thread.is_alive() and not ran  # ticket 5 waits: nothing consumed yet
    lookahead.close()
    thread.join(1.0)
    assert not thread.is_alive() and done == [None] and not ran


def test_a_run_holds_at_most_its_lookahead(tmp_path, monkeypatch, model_args):
    """Through annotate.run: no more chunks are featurized ahead than the lookahead allows."""
    from conftest import write_audio

    import annotate
    from annotate.testing import speech_like

    for i in range(12):
        write_audio(tmp_path / "c" / f"{i:02d}.wav", speech_like(2.0, seed=i), 16000)
    seen = {"running": 0, "most": 0, "consumed": 0}
    lock = threading.Lock()
    original = local.featurize_chunk
    real_consumed = Lookahead.consumed

    def counting(*args):
        with lock:
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"] - seen["consumed"])
        return original(*args)

    def consumed(self):
        with lock:
            seen["consumed"] += 1
        time.sleep(0.01)
        real_consumed(self)

    monkeypatch.setattr(local, "featurize_chunk", counting)
    monkeypatch.setattr(local, "LOOKAHEAD_PER_JOB", 1)
    monkeypatch.setattr(Lookahead, "consumed", consumed)
    annotate.run([tmp_path / "c"], tmp_path / "out.parquet", jobs=2, workers="threads",
                 **model_args)
    assert seen["running"] == 12 and seen["most"] <= 2


def _admitted(path: str, ticket: int) -> tuple[int, int]:
    """A task's ticket and the results consumed when it started (read in the worker)."""
    with open(path, "rb") as state:
        return ticket, int.from_bytes(state.read(8), "little")


def test_worker_processes_wait_for_the_consumer_through_a_file(tmp_path):
    from annotate.pipeline.workers import FileLookahead

    lookahead = FileLookahead(tmp_path / "lookahead", 3)
    results = Parallel(n_jobs=2, backend="loky", return_as="generator", batch_size=1)(
        delayed(gated)(lookahead, i, _admitted, lookahead.path, i) for i in range(30))
    seen = []
    for ticket, consumed_at_start in results:
        time.sleep(0.01)  # a slow consumer
        seen.append((ticket, consumed_at_start))
        lookahead.consumed()
    lookahead.close()
    assert [t for t, _ in seen] == list(range(30))
    assert all(ticket < consumed + 3 for ticket, consumed in seen)
    assert max(ticket - consumed for ticket, consumed in seen) == 2  # the gate was reached


def test_a_closed_file_lookahead_releases_workers(tmp_path):
    import pickle

    from annotate.pipeline.workers import FileLookahead

    lookahead = FileLookahead(tmp_path / "lookahead", 1)
    in_worker = pickle.loads(pickle.dumps(lookahead))  # as a worker process gets it
    assert in_worker.wait_turn(0)  # admitted at once
    lookahead.close()
    assert gated(in_worker, 10, lambda: "ran") is None  # released, not run
    (tmp_path / "lookahead").unlink()  # the run finished and removed its folder
    assert in_worker.wait_turn(10) is False
