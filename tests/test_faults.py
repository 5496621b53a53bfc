"""Faults: kill -9, Ctrl-C, a full disk, two runs at once, damaged parts, unwritable outputs.

Every fault ends in one of two ways: a clear error with the right exit code,
or a run that, resumed, writes exactly the table an uninterrupted run
writes. Kill and Ctrl-C trials hit a real ``python -m annotate run``
subprocess; the slow set (``-m slow``) repeats the kill trials at least 20
times. Figures are in ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_audio
from typer.testing import CliRunner

import annotate
from annotate.cli import app
from annotate.pipeline.progress import Progress
from annotate.testing import speech_like

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = 10
#: One part per recording, so that a kill finds many states to land in.
RUN_OPTIONS = {"jobs": 2, "batch_size": 1}
CLI_OPTIONS = ["-j", "2", "--batch-size", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "corpus"
    for i in range(RECORDINGS):
        write_audio(root / f"r{i:02d}.wav", speech_like(2.0 + 0.5 * i, seed=i), 16000)
    (root / "broken.wav").write_bytes(b"RIFF junk")  # a failure row must survive resumes too
    return root


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, model_args):
    """The tables of an uninterrupted run (library call, same settings)."""
    out = tmp_path_factory.mktemp("reference") / "out.parquet"
    annotate.run([corpus], out, **RUN_OPTIONS, **model_args)
    return pq.read_table(out), pq.read_table(out.with_name("out.failures.parquet"))


def assert_same_as_reference(out: Path, reference) -> None:
    """Both tables equal the uninterrupted run's, metadata included; nothing left over."""
    table, failures = reference
    assert pq.read_table(out).equals(table, check_metadata=True)
    assert pq.read_table(out.with_name("out.failures.parquet")).equals(failures,
                                                                        check_metadata=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.failures.parquet",
                                                            "out.parquet"]


def resume(corpus: Path, out: Path, model_args, progress: Progress | None = None):
    return annotate.run([corpus], out, progress=progress, **RUN_OPTIONS, **model_args)


def start_cli(corpus: Path, out: Path, model_cli_args, *extra: str) -> subprocess.Popen:
    """``python -m annotate run`` in its own process group (as a shell job would be)."""
    with open(out.with_name("run.log"), "ab") as log:  # removed before tables are compared
        return subprocess.Popen(
            [sys.executable, "-m", "annotate", "run", str(corpus), "-o", str(out), *CLI_OPTIONS,
             *extra, *model_cli_args],
            stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        )


def says(output: str, text: str) -> bool:
    """Whether ``text`` is in ``output``, however the console wrapped the lines."""
    return "".join(text.split()) in "".join(output.split())


def parts_of(out: Path) -> list[Path]:
    folder = out.with_name(out.name + ".partial") / "parts"
    with contextlib.suppress(FileNotFoundError):
        return sorted(folder.glob("*.parquet"))
    return []


def wait_until(condition, proc: subprocess.Popen, timeout_s: float = 240.0) -> bool:
    """Poll ``condition`` until true (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError("the run neither reached the state nor ended")
        time.sleep(0.01)
    return True


def end_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the run's process group (its joblib workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def workdir(tmp_path: Path, name: str) -> Path:
    """A folder holding only the output, so that leftovers are seen."""
    folder = tmp_path / name / "run"
    folder.mkdir(parents=True)
    return folder / "out.parquet"


def kill_trial(corpus, out, model_cli_args, rng: random.Random, full_run_s: float | None = None
               ) -> dict:
    """Start a run and SIGKILL it at a random moment; return what the kill hit.

    Without ``full_run_s`` the moment is drawn over the writing phase: once
    the partial state is open, after a random number of finished parts (0 to
    all) plus up to 0.2 s, which lands in part writes, between them and in
    the final write and clean-up. With
    ``full_run_s`` it is drawn uniformly from the start of the process (so
    start-up, discovery and model loading are hit as well).
    """
    proc = start_cli(corpus, out, model_cli_args)
    try:
        if full_run_s is None:
            want = rng.randint(0, RECORDINGS)
            parts = out.with_name(out.name + ".partial") / "parts"
            wait_until(lambda: parts.is_dir() and len(parts_of(out)) >= want or out.exists(),
                       proc)
            time.sleep(rng.uniform(0.0, 0.2))
        else:
            time.sleep(rng.uniform(0.0, full_run_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        end_group(proc)
    return {"killed": proc.returncode == -signal.SIGKILL, "parts": len(parts_of(out)),
            "output_written": out.exists()}


def run_kill_trials(corpus, tmp_path, model_args, model_cli_args, reference, seeds,
                    full_run_s=None) -> list[dict]:
    outcomes = []
    for seed in seeds:
        rng = random.Random(seed)
        out = workdir(tmp_path, f"trial{seed}")
        hit = kill_trial(corpus, out, model_cli_args, rng, full_run_s)
        if rng.random() < 0.3 and hit["killed"]:  # kill the resuming run as well
            hit["second"] = kill_trial(corpus, out, model_cli_args, rng, full_run_s)
        out.with_name("run.log").unlink()
        started = time.monotonic()
        result = resume(corpus, out, model_args)
        assert_same_as_reference(out, reference)
        outcomes.append({**hit, "seed": seed, "resumed": result.skipped,
                         "resume_s": round(time.monotonic() - started, 2)})
        print(outcomes[-1])
    return outcomes


def test_kill_9_at_random_moments_then_resume_gives_the_same_table(
        corpus, tmp_path, model_args, model_cli_args, reference):
    outcomes = run_kill_trials(corpus, tmp_path, model_args, model_cli_args, reference,
                               seeds=[1, 2])
    assert any(o["killed"] for o in outcomes)


@pytest.mark.slow
def test_kill_9_many_trials(corpus, tmp_path, model_args, model_cli_args, reference):
    """24 trials: 18 over the writing phase, 6 from process start (seeds 100-123)."""
    out = workdir(tmp_path, "uninterrupted")
    started = time.monotonic()
    proc = start_cli(corpus, out, model_cli_args)
    assert proc.wait(timeout=300) == 1  # finished; broken.wav failed
    full_run_s = time.monotonic() - started
    out.with_name("run.log").unlink()
    assert_same_as_reference(out, reference)  # the CLI writes what the library writes
    outcomes = run_kill_trials(corpus, tmp_path, model_args, model_cli_args, reference,
                               seeds=range(100, 118))
    outcomes += run_kill_trials(corpus, tmp_path, model_args, model_cli_args, reference,
                                seeds=range(118, 124), full_run_s=full_run_s)
    print(f"uninterrupted CLI run {full_run_s:.1f} s; {len(outcomes)} trials, "
          f"{sum(o['killed'] for o in outcomes)} killed mid-run, "
          f"{sum('second' in o for o in outcomes)} with the resume killed too, "
          f"{sum(o['parts'] > 0 for o in outcomes)} with parts on disk, "
          f"{sum(o['output_written'] for o in outcomes)} after the final write")
    assert len(outcomes) >= 20


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_a_second_run_refuses_and_ctrl_c_exits_130_then_the_run_resumes(
        corpus, tmp_path, model_args, model_cli_args, reference, workers):
    """Two faults on one live run (a subprocess each costs seconds of TensorFlow start-up).

    The first run is held mid-way (SIGSTOP) with its lock taken; a second run
    on the same output must refuse and write nothing. The first then goes on
    until Ctrl-C (SIGINT to its process group, as a terminal sends it) stops
    it with exit code 130; a resume writes the uninterrupted table.
    """
    out = workdir(tmp_path, "lock-and-sigint")
    first = start_cli(corpus, out, model_cli_args, "--workers", workers)
    try:
        assert wait_until(lambda: len(parts_of(out)) >= 1, first)
        os.killpg(first.pid, signal.SIGSTOP)
        lock = out.with_name("out.parquet.partial") / "lock"
        with open(lock, "a") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(out.parent)
        second = CliRunner().invoke(app, ["run", str(corpus), "-o", str(out), *CLI_OPTIONS,
                                          *model_cli_args])
        assert second.exit_code == 3
        assert says(second.output, "another annotate run is writing")
        assert snapshot(out.parent) == before  # the refused run wrote nothing

        os.killpg(first.pid, signal.SIGCONT)
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(timeout=120) == 130
    finally:
        end_group(first)
    log = out.with_name("run.log").read_text()
    out.with_name("run.log").unlink()
    assert says(log, "interrupted: finished recordings are kept; run the same command again")
    assert "Traceback" not in log
    kept = len(parts_of(out))
    assert kept >= 1
    result = resume(corpus, out, model_args)
    assert result.skipped == kept
    assert_same_as_reference(out, reference)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.log"}


class StopAfter(Progress):
    """Raises KeyboardInterrupt once ``n`` recordings are done; records messages."""

    def __init__(self, n: int | None = None) -> None:
        self.n, self.seen, self.messages = n, 0, []

    def advance(self, recordings: int, audio_s: float) -> None:
        self.seen += recordings
        if self.n is not None and self.seen >= self.n:
            raise KeyboardInterrupt

    def message(self, text: str) -> None:
        self.messages.append(text)


def interrupted_state(corpus, out, model_args, n: int = 7) -> list[Path]:
    with pytest.raises(KeyboardInterrupt):
        resume(corpus, out, model_args, progress=StopAfter(n))
    parts = parts_of(out)
    assert len(parts) >= 6
    return parts


def test_damaged_parts_are_detected_and_recomputed(corpus, tmp_path, model_args, reference):
    out = workdir(tmp_path, "damaged")
    parts = interrupted_state(corpus, out, model_args)
    truncated, flipped, footer, emptied, renamed = parts[:5]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    flipped.write_bytes(flip_a_bit_parquet_misses(flipped.read_bytes()))
    data = bytearray(footer.read_bytes())
    data[-9] ^= 0x01  # one bit of the footer's metadata, just before its length
    footer.write_bytes(bytes(data))
    emptied.write_bytes(b"")
    renamed.rename(renamed.with_name(f"{renamed.name[:6]}-{'0' * 16}.parquet"))
    # Temporary files of a run killed while writing a part and the final table.
    (parts[0].parent / ".000099.parquet.4242.tmp").write_bytes(b"half a part")
    (out.parent / ".out.parquet.4242.tmp").write_bytes(b"half a table")

    progress = StopAfter()
    result = resume(corpus, out, model_args, progress=progress)
    discarded = [m for m in progress.messages if m.startswith("discarded unreadable part")]
    assert len(discarded) == 5, progress.messages
    assert result.skipped == len(parts) - 5
    assert_same_as_reference(out, reference)


def flip_a_bit_parquet_misses(data: bytes) -> bytes:
    """The first one-bit change that Parquet reads back without error, as other rows.

    Page checksums do not cover everything (dictionary pages, statistics,
    headers): about 2 % of all one-bit flips of a part read back silently
    wrong. The part's hash in its name is what catches them.
    """
    original = pq.read_table(io.BytesIO(data))
    for position in range(len(data)):
        changed = bytearray(data)
        changed[position] ^= 0x01
        try:
            table = pq.read_table(io.BytesIO(bytes(changed)), page_checksum_verification=True)
        except Exception:  # noqa: BLE001 - detected by Parquet itself: not what we want here
            continue
        if not table.equals(original):
            return bytes(changed)
    raise AssertionError("no silent one-bit change found")


def test_parts_without_a_fingerprint_are_not_trusted(corpus, tmp_path, model_args, reference):
    """A clean-up cut short removes the fingerprint first; what it leaves is redone."""
    out = workdir(tmp_path, "no-fingerprint")
    interrupted_state(corpus, out, model_args)
    (out.with_name("out.parquet.partial") / "fingerprint.json").unlink()
    result = resume(corpus, out, model_args)
    assert result.skipped == 0
    assert_same_as_reference(out, reference)


@contextlib.contextmanager
def mounted(kind: str, target: Path, source: Path | None = None, size_kb: int = 0):
    """A tmpfs of ``size_kb`` or a read-only bind mount at ``target``; None if not permitted."""
    target.mkdir(parents=True, exist_ok=True)
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(target)]
    else:
        command = ["mount", "--bind", "-o", "ro", str(source), str(target)]
    if shutil.which("mount") is None or subprocess.run(command, capture_output=True).returncode:
        yield None
        return
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_stops_with_a_clear_error_and_resumes_once_space_is_back(
        corpus, tmp_path, model_args, model_cli_args, reference):
    """A 32 KiB tmpfs: the fingerprint and a few parts fit, the rest does not."""
    with mounted("tmpfs", tmp_path / "disk", size_kb=32) as disk:
        if disk is None:  # not root: a per-process file-size limit stands in for the disk
            return full_disk_by_rlimit(corpus, tmp_path, model_args, model_cli_args, reference)
        out = disk / "out.parquet"
        full = CliRunner().invoke(app, ["run", str(corpus), "-o", str(out), *CLI_OPTIONS,
                                        *model_cli_args])
        assert full.exit_code == 3, full.output
        assert says(full.output, f"no space left on the disk holding {disk}")
        assert says(full.output, f"the file system mounted at {disk}")
        assert says(full.output, "run the same command again to resume")
        assert not out.exists()
        kept = len(parts_of(out))
        assert kept >= 1, "parts written before the disk filled are kept"

        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        result = resume(corpus, out, model_args)
        assert result.skipped == kept
        assert_same_as_reference(out, reference)


def full_disk_by_rlimit(corpus, tmp_path, model_args, model_cli_args, reference) -> None:
    out = workdir(tmp_path, "fsize")

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * 1024, 8 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "annotate", "run", str(corpus), "-o", str(out), *CLI_OPTIONS,
         *model_cli_args], capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 3, proc.stderr
    assert says(proc.stderr, "file-size limit")
    resume(corpus, out, model_args)
    assert_same_as_reference(out, reference)


def test_unwritable_output_folders_fail_before_any_work(corpus, tmp_path, model_cli_args,
                                                       monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr("annotate.pipeline.run.discover", no_work)
    monkeypatch.setattr("annotate.pipeline.run.ModelSet.load", no_work)
    runner = CliRunner()

    missing = runner.invoke(app, ["run", str(corpus), "-o", str(tmp_path / "no" / "out.parquet"),
                                  *model_cli_args])
    assert missing.exit_code == 2 and "does not exist" in missing.output

    source = tmp_path / "writable"
    source.mkdir()
    with mounted("bind-ro", tmp_path / "read-only", source=source) as folder:
        if folder is None and os.geteuid() != 0:  # not root: permissions are enough
            folder = source
            source.chmod(0o555)
        elif folder is None:  # root without mount: os.access stands in
            folder = source
            monkeypatch.setattr("annotate.pipeline.store.os.access", lambda *a, **k: False)
        result = runner.invoke(app, ["run", str(corpus), "-o", str(folder / "out.parquet"),
                                     *model_cli_args])
        assert result.exit_code == 2
        assert says(result.output, f"the output folder {folder} is not writable")
        assert list(folder.iterdir()) == []


def test_the_runs_last_words_wait_for_a_decoder_capture_on_descriptor_2(tmp_path, capfd):
    """A feature thread catching a decoder's notes on descriptor 2 does not swallow them."""
    import threading
    import time

    from annotate import c_stderr
    from annotate.cli.run import _descriptor_2_as_it_is

    captured = tmp_path / "notes.txt"
    inside = threading.Event()

    def capture() -> None:
        with c_stderr.exclusive(), open(captured, "w") as sink:
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            inside.set()
            time.sleep(0.3)
            os.dup2(saved, 2)
            os.close(saved)

    thread = threading.Thread(target=capture)
    thread.start()
    inside.wait(5)
    with _descriptor_2_as_it_is():
        os.write(2, b"interrupted: finished recordings are kept\n")
    thread.join()
    assert "interrupted" in capfd.readouterr().err
    assert "interrupted" not in captured.read_text()
