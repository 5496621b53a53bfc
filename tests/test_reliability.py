"""Bad inputs: each is annotated correctly or becomes a clear failure row, never a crash.

One corpus holds every kind of bad input found in real collections; a real
``annotate run`` subprocess goes over it (so a hang, a Python traceback or C
decoder noise on stderr would show), and each case is then checked on the
tables it wrote. See ``docs/reliability.md`` for the full list and outcomes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
from conftest import LANGUAGES, write_audio
from typer.testing import CliRunner

import annotate
import annotate.pipeline.run
from annotate import c_stderr
from annotate.cli import app
from annotate.testing import speech_like

ROOT = Path(__file__).resolve().parent.parent
LANG_COLS = [f"lang_{c}" for c in LANGUAGES]
NFC_NAME = unicodedata.normalize("NFC", "café_é.wav")
NFD_NAME = unicodedata.normalize("NFD", "café_é.wav")
UNICODE_NAME = "日本語 ünïcödé 🎤 ‮rtl.wav"
NEWLINE_NAME = "line\nbreak.wav"
NON_UTF8_NAME = b"caf\xe9-latin1.wav"  # a Latin-1 name on a UTF-8 system

# key -> (error kind, words the message must contain)
EXPECTED_FAILURES = {
    "zero_bytes.wav": ("empty", "empty file (0 bytes)"),
    "truncated_header.wav": ("decode", "not a readable audio file"),
    "text.wav": ("decode", "Format not recognised"),
    "random_bytes.wav": ("decode", "Format not recognised"),
    "random_bytes.mp3": ("decode", "Format not recognised"),
    "random_bytes.flac": ("decode", "Format not recognised"),
    "corrupt_middle.mp3": ("decode", "Illegal Audio-MPEG-Header"),
    "corrupt_middle.flac": ("decode", "flac decoder"),  # "lost sync" or another error, by where
    "truncated.flac": ("decode", "corrupt or truncated file"),
    "truncated.mp3": ("truncated", "header says 6.00 s"),
    "broken_link.wav": ("missing", "broken symbolic link"),
    "link_loop.wav": ("unreadable", "symbolic link loop"),
    "folder.wav": ("not-a-file", "a directory"),
    "fifo.wav": ("not-a-file", "FIFO"),
    "device.wav": ("not-a-file", "a device"),
}
EXPECTED_ANNOTATED = {
    "good.wav", "header_claims_more.wav", "nan_inf.wav", "beyond_full_scale.wav",
    "all_zero.wav", "dc_only.wav", "clip_5ms.wav", "six_channels_96k_24bit.wav",
    "six_channels_reference.wav", "telephone_8k.wav", "telephone_8k_ulaw.wav",
    "UPPER.WAV", "Mixed.Flac", "LOUD.MP3", NFC_NAME, NFD_NAME, UNICODE_NAME, NEWLINE_NAME,
    "caf\\xe9-latin1.wav", "link_to_good.wav", "sub/deeper.wav",
}


def make_bad_corpus(root: Path) -> None:
    """Write every bad input of the reliability issue into ``root``."""
    rng = np.random.default_rng(0)
    speech = speech_like(6.0, 16000, seed=1)
    write_audio(root / "good.wav", speech, 16000)
    good = (root / "good.wav").read_bytes()
    (root / "zero_bytes.wav").write_bytes(b"")
    (root / "truncated_header.wav").write_bytes(good[:20])
    # The RIFF sizes still say 6 s; half of the samples are there.
    (root / "header_claims_more.wav").write_bytes(good[: 44 + 16000 * 2 * 3])
    (root / "text.wav").write_text("this is a text file, not audio\n" * 40)
    for ext in ("wav", "mp3", "flac"):
        (root / f"random_bytes.{ext}").write_bytes(rng.bytes(50_000))
    for ext in ("mp3", "flac"):
        clean = root / f"clean.{ext}.tmp"
        sf.write(clean, speech, 16000, format=ext.upper())
        data = bytearray(clean.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 2000] = rng.bytes(2000)
        (root / f"corrupt_middle.{ext}").write_bytes(bytes(data))
        (root / f"truncated.{ext}").write_bytes(clean.read_bytes()[: len(data) // 2])
        clean.unlink()
    nan_inf = speech.copy()
    nan_inf[1000:1100], nan_inf[5000:5100], nan_inf[9000] = np.nan, np.inf, -np.inf
    write_audio(root / "nan_inf.wav", nan_inf, 16000, subtype="FLOAT")
    write_audio(root / "beyond_full_scale.wav", speech * np.float32(1e30), 16000,
                subtype="FLOAT")
    write_audio(root / "all_zero.wav", np.zeros(4 * 16000, np.float32), 16000)
    write_audio(root / "dc_only.wav", np.full(4 * 16000, 0.5, np.float32), 16000)
    write_audio(root / "clip_5ms.wav", speech[:80], 16000)
    # The same speech in all six channels (at several gains, mean 1) and as a
    # 16 kHz mono reference: both must get (nearly) the same probabilities.
    hi = speech_like(4.0, 96000, seed=11)
    gains = np.array([0.5, 1.5, 1.0, 1.0, 0.8, 1.2], np.float32)
    write_audio(root / "six_channels_96k_24bit.wav", hi[:, None] * gains, 96000,
                subtype="PCM_24")
    write_audio(root / "six_channels_reference.wav", soxr.resample(hi, 96000, 16000), 16000,
                subtype="FLOAT")
    telephone = speech_like(5.0, 8000, seed=8)
    write_audio(root / "telephone_8k.wav", telephone, 8000)
    write_audio(root / "telephone_8k_ulaw.wav", telephone, 8000, subtype="ULAW")
    for name in ("UPPER.WAV", "Mixed.Flac", NFC_NAME, NFD_NAME, UNICODE_NAME, NEWLINE_NAME,
                 "sub/deeper.wav"):
        write_audio(root / name, speech[:16000], 16000)
    write_audio(root / "LOUD.MP3", speech[:16000], 16000, format="MP3")
    with open(os.path.join(os.fsencode(root), NON_UTF8_NAME), "wb") as handle:
        handle.write((root / "UPPER.WAV").read_bytes())
    os.symlink("good.wav", root / "link_to_good.wav")
    os.symlink("nowhere.wav", root / "broken_link.wav")
    os.symlink("link_loop.wav", root / "link_loop.wav")
    os.symlink("..", root / "sub" / "loop_to_parent")  # a directory loop: not descended
    os.symlink("/dev/zero", root / "device.wav")
    (root / "folder.wav").mkdir()
    os.mkfifo(root / "fifo.wav")
    (root / "notes.txt").write_text("not audio, ignored")


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, model_cli_args):
    """One real ``annotate run`` over the bad corpus: (process, segments, failures)."""
    root = tmp_path_factory.mktemp("bad") / "corpus"
    root.mkdir()
    make_bad_corpus(root)
    out = root.parent / "out.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "annotate", "run", str(root), "-o", str(out), "-j", "2",
         *model_cli_args],
        capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert proc.returncode == 1, proc.stderr  # finished, some inputs failed
    return proc, pd.read_parquet(out), pd.read_parquet(root.parent / "out.failures.parquet")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_no_traceback_and_no_decoder_noise(bad_run):
    proc, _, _ = bad_run
    assert "Traceback" not in proc.stdout + proc.stderr
    # mpg123 prints these to the C-level stderr on corrupt MP3s; they are
    # caught in the decoder and put in the failure message instead.
    assert "Illegal Audio-MPEG-Header" not in proc.stderr
    assert "resync" not in proc.stderr


def test_threads_redirecting_descriptor_2_leave_it_where_it_was():
    # A feature thread catching decoder notes and the main thread muting
    # LiteRT's start-up line once restored each other's redirection: the
    # rest of the run's messages went to a deleted file.
    from annotate.audio.decode import decoder_messages
    from annotate.c_stderr import muted

    original = os.fstat(2)
    stop = threading.Event()

    def catch_decoder_notes() -> None:
        while not stop.is_set():
            with decoder_messages():
                pass

    thread = threading.Thread(target=catch_decoder_notes)
    thread.start()
    try:
        for _ in range(2000):
            with muted():
                pass
    finally:
        stop.set()
        thread.join()
    now = os.fstat(2)
    assert (now.st_dev, now.st_ino) == (original.st_dev, original.st_ino)


def test_quiet_threads_drop_c_stderr_together_and_exclusive_sections_wait_for_them(capfd):
    import ctypes

    # glibc, musl and macOS name the variable; without it MP3 decoding is serial.
    assert c_stderr.can_quiet()

    libc = ctypes.CDLL(None)
    libc.fputs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    libc.fflush.argtypes = [ctypes.c_void_p]
    variable = c_stderr._stream_and_sink()[0]

    def c_print(text: str) -> None:  # as mpg123 prints: through the C stderr stream
        libc.fputs(text.encode(), variable.value)
        libc.fflush(variable.value)

    inside, release, order = threading.Barrier(3, timeout=30), threading.Event(), []

    def decode_quietly(name: str) -> None:
        with c_stderr.quiet():
            inside.wait()
            c_print(f"Note: from {name}\n")
            release.wait()
        order.append(f"{name} left")

    threads = [threading.Thread(target=decode_quietly, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    inside.wait()  # both quiet at once: neither waited for the other

    def catch() -> None:
        with c_stderr.exclusive():
            order.append("exclusive entered")

    waiter = threading.Thread(target=catch)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waits for the quiet ones
    release.set()
    for thread in [*threads, waiter]:
        thread.join()
    assert order[-1] == "exclusive entered"
    c_print("after\n")
    assert capfd.readouterr().err == "after\n"


def test_every_input_is_either_annotated_or_a_failure(bad_run):
    _, segments, failures = bad_run
    annotated, failed = set(segments["path"]), set(failures["path"])
    assert annotated == EXPECTED_ANNOTATED
    assert failed == set(EXPECTED_FAILURES)
    assert not failures["path"].duplicated().any()
    assert not failures["message"].str.contains("Traceback").any()


@pytest.mark.parametrize("key", sorted(EXPECTED_FAILURES))
def test_bad_file_becomes_a_clear_failure_row(bad_run, key):
    _, _, failures = bad_run
    row = failures.set_index("path").loc[key]
    kind, words = EXPECTED_FAILURES[key]
    assert row["error"] == kind, row["message"]
    assert words in row["message"]


def rows_of(segments: pd.DataFrame, key: str) -> pd.DataFrame:
    return segments[segments["path"] == key]


def assert_probabilities_valid(rows: pd.DataFrame) -> None:
    speech = rows[rows["speech"]]
    assert len(speech) > 0
    values = speech[LANG_COLS].to_numpy(dtype=float)
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-9)
    assert np.isfinite(speech["emotion_p"].to_numpy(dtype=float)).all()


def test_header_claiming_more_than_present_is_annotated_for_the_audio_there(bad_run):
    rows = rows_of(bad_run[1], "header_claims_more.wav")
    # libsndfile trusts the file size over the RIFF header: 3 s, not 6 s.
    assert rows["end_s"].max() == pytest.approx(3.0, abs=0.01)
    assert_probabilities_valid(rows)


def test_nan_and_inf_samples_are_zeroed(bad_run):
    segments = bad_run[1]
    dirty, clean = rows_of(segments, "nan_inf.wav"), rows_of(segments, "good.wav")
    assert_probabilities_valid(dirty)
    np.testing.assert_allclose(dirty[LANG_COLS].to_numpy(float), clean[LANG_COLS].to_numpy(float),
                               atol=0.02)


def test_float_samples_beyond_full_scale_give_finite_rows(bad_run):
    rows = rows_of(bad_run[1], "beyond_full_scale.wav")
    assert len(rows) == 2
    probs = rows[rows["speech"]][LANG_COLS].to_numpy(dtype=float)
    assert np.isfinite(probs).all()


@pytest.mark.parametrize("key", ["all_zero.wav", "dc_only.wav"])
def test_silence_and_dc_are_annotated_as_no_speech(bad_run, key):
    rows = rows_of(bad_run[1], key)
    assert rows[["start_s", "end_s"]].to_numpy().tolist() == [[0, 3], [3, 4]]
    assert not rows["speech"].any()
    assert rows[["lang", "emotion", *LANG_COLS]].isna().all().all()


def test_a_5_ms_clip_is_one_short_segment(bad_run):
    rows = rows_of(bad_run[1], "clip_5ms.wav")
    assert rows[["start_s", "end_s"]].to_numpy().tolist() == [[0, 0.005]]
    assert not rows["speech"].any()


def test_six_channels_96k_24bit_match_their_mono_16k_reference(bad_run):
    segments = bad_run[1]
    many = rows_of(segments, "six_channels_96k_24bit.wav")
    mono = rows_of(segments, "six_channels_reference.wav")
    assert many[["start_s", "end_s"]].to_numpy().tolist() == [[0, 3], [3, 4]]
    assert_probabilities_valid(many)
    np.testing.assert_allclose(many[LANG_COLS].to_numpy(float), mono[LANG_COLS].to_numpy(float),
                               atol=0.02)


@pytest.mark.parametrize("key", ["telephone_8k.wav", "telephone_8k_ulaw.wav"])
def test_8k_telephone_audio_is_annotated(bad_run, key):
    rows = rows_of(bad_run[1], key)
    assert rows[["start_s", "end_s"]].to_numpy().tolist() == [[0, 3], [3, 5]]
    assert rows["speech"].all()
    assert_probabilities_valid(rows)


def test_unusual_names_are_annotated_under_printable_keys(bad_run):
    segments = bad_run[1]
    reference = rows_of(segments, "UPPER.WAV")[LANG_COLS].to_numpy(float)
    for key in ("Mixed.Flac", NFC_NAME, NFD_NAME, UNICODE_NAME, NEWLINE_NAME,
                "caf\\xe9-latin1.wav"):
        rows = rows_of(segments, key)
        assert len(rows) == 1, key
        # the same audio: the same labels, to the last digits a batch's arithmetic moves
        np.testing.assert_allclose(rows[LANG_COLS].to_numpy(float), reference, atol=1e-5)
    assert NFC_NAME != NFD_NAME  # two files that look alike stay two recordings
    assert_probabilities_valid(rows_of(segments, "LOUD.MP3"))


def test_symlinks_to_files_are_followed_and_directory_loops_are_not(bad_run):
    segments = bad_run[1]
    assert len(rows_of(segments, "link_to_good.wav")) == 2
    assert not segments["path"].str.contains("loop_to_parent").any()


def test_unreadable_file_and_folder_as_an_unprivileged_user(tmp_path):
    """Permissions stop users but not root: discovery and probing run as ``nobody`` here.

    The interpreter lives under /root, which ``nobody`` cannot read, so the
    subprocess starts as root, imports what it needs and then drops to uid
    65534 for good before touching the corpus.
    """
    folder = Path(tempfile.mkdtemp(prefix="annotate-unreadable-"))
    try:
        folder.chmod(0o755)
        write_audio(folder / "locked.wav", speech_like(1.0), 16000)
        write_audio(folder / "open.wav", speech_like(1.0), 16000)
        write_audio(folder / "closed" / "inner.wav", speech_like(1.0), 16000)
        (folder / "locked.wav").chmod(0o000)
        (folder / "closed").chmod(0o000)
        (folder / "open.wav").chmod(0o644)
        script = (
            "import json, os, sys\n"
            "from annotate.audio.discover import discover\n"
            "from annotate.prepare.featurize import SegmentSettings, plan_chunks\n"
            "if os.geteuid() == 0:\n"
            "    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "assert os.geteuid() != 0 and not os.access(sys.argv[1] + '/locked.wav', os.R_OK)\n"
            "recordings, failures = discover([sys.argv[1]])\n"
            "planned = [plan_chunks(i, r, SegmentSettings(), 600.0)\n"
            "           for i, r in enumerate(recordings)]\n"
            "failures += [p for p in planned if not isinstance(p, list)]\n"
            "print(json.dumps({'annotatable': [r.key for r, p in zip(recordings, planned)\n"
            "                                  if isinstance(p, list)],\n"
            "                  'failures': [[f.path, f.error, f.message] for f in failures]}))\n"
        )
        proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True,
                              text=True, timeout=120, env=_env(), cwd=folder)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        assert seen["annotatable"] == ["open.wav"]
        by_path = {path: (kind, message) for path, kind, message in seen["failures"]}
        assert by_path["locked.wav"][0] == "unreadable"
        assert "permission denied" in by_path["locked.wav"][1]
        assert by_path["closed"] == ("unreadable", "cannot list directory: Permission denied")
    finally:
        for path in (folder / "closed", folder / "locked.wav"):
            path.chmod(0o755)
        shutil.rmtree(folder)


def test_manifest_problems_become_failures_and_paths_outside_are_kept(tmp_path, model_args):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_audio(data / "a.wav", speech_like(2.0, seed=1), 16000)
    write_audio(data / "b.wav", speech_like(2.0, seed=2), 16000)
    write_audio(elsewhere / "outside.wav", speech_like(2.0, seed=3), 16000)
    absolute = str(elsewhere / "abs.wav")
    write_audio(Path(absolute), speech_like(2.0, seed=4), 16000)
    # A spreadsheet's byte-order mark, a duplicate, a missing file, a path
    # outside the manifest's folder, an absolute path, a short line, a NUL
    # byte and an empty path.
    (data / "list.csv").write_text(
        "\ufeffpath,label\n" "a.wav,x\n" "a.wav,x\n" "b.wav,y\n" "missing.wav,z\n"
        "../elsewhere/outside.wav,w\n" f"{absolute},v\n" "only-one-field\n" "nul\x00.wav,u\n"
        ",empty\n", encoding="utf-8")
    (data / "list.jsonl").write_text(
        '{"path": "a.wav"}\n' "not json\n" "[1, 2]\n" '{"path": "nul\\u0000.wav"}\n'
        '{"path": "\\ud800.wav"}\n' '{"label": "no path"}\n', encoding="utf-8")
    out = tmp_path / "out.parquet"
    result = annotate.run([data / "list.csv", data / "list.jsonl"], out, jobs=1, **model_args)
    segments = pd.read_parquet(out)
    assert sorted(segments["path"].unique()) == sorted(
        ["a.wav", "b.wav", "../elsewhere/outside.wav", absolute])
    assert segments.groupby("path").size().eq(1).all()  # the duplicate is annotated once
    failures = pd.read_parquet(tmp_path / "out.failures.parquet")
    by_path = dict(zip(failures["path"], failures["error"], strict=True))
    assert by_path == {
        "missing.wav": "missing", "nul\x00.wav": "missing", "\\ud800.wav": "missing",
        "list.csv:8": "manifest", "list.csv:<empty>": "manifest",
        "list.jsonl:2": "manifest", "list.jsonl:3": "manifest", "list.jsonl:<empty>": "manifest",
    }
    assert result.failed == len(by_path)


def test_manifest_without_path_column_stops_before_any_work(tmp_path, model_cli_args):
    (tmp_path / "list.csv").write_text("file,label\na.wav,x\n")
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(app, ["run", str(tmp_path / "list.csv"), "-o", str(out),
                                      *model_cli_args])
    assert result.exit_code == 2
    assert "no 'path' column (columns: file, label)" in result.output
    assert not out.exists() and not (tmp_path / "out.parquet.partial").exists()


def test_a_fifo_or_loop_given_as_an_input_is_a_usage_error_not_a_hang(tmp_path, model_cli_args):
    os.mkfifo(tmp_path / "pipe.wav")
    os.symlink("loop", tmp_path / "loop")
    out = tmp_path / "out.parquet"
    for given, words in ((tmp_path / "pipe.wav", "bad input"),
                         (tmp_path / "loop", "input not found")):
        result = CliRunner().invoke(app, ["run", str(given), "-o", str(out), *model_cli_args])
        assert result.exit_code == 2, result.output
        assert words in result.output
    assert not out.exists()


def write_long_wav(path: Path, duration_s: float, sampling_rate: int = 16000) -> None:
    """A long speech-like WAV written block by block (never held in memory)."""
    block = speech_like(30.0, sampling_rate, seed=5)
    with sf.SoundFile(path, "w", sampling_rate, 1, subtype="PCM_16") as handle:
        for _ in range(int(duration_s // 30.0)):
            handle.write(block)


PEAK_RSS_SCRIPT = """
import gc, json, sys
import annotate, annotate.pipeline.run
from pathlib import Path
short, long_, out, language, emotion, chunk_s = sys.argv[1:7]
annotate.pipeline.run.CHUNK_S = float(chunk_s)
models = dict(language_model=language, emotion_models={"*": emotion}, jobs=1)

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

annotate.run([short], Path(out) / "short.parquet", **models)
gc.collect()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) to the current RSS
before = status_mb("VmRSS")
annotate.run([long_], Path(out) / "long.parquet", **models)
print(json.dumps({"baseline_mb": before, "peak_mb": status_mb("VmHWM"),
                  "process_peak_mb": status_mb("VmHWM")}))
"""


def measure_peak_rss(tmp_path: Path, models: dict, duration_s: float, chunk_s: float) -> dict:
    """Peak RSS of one process (jobs=1: decoding, features and inference all in it).

    A short recording is annotated first, so that TensorFlow, the models and
    the traced functions are in the baseline; then the kernel's peak-RSS mark
    is reset (``/proc/self/clear_refs``), and the peak over the baseline is
    what the long recording costs.
    """
    short, long_ = tmp_path / "short" / "a.wav", tmp_path / "long" / "long.wav"
    write_audio(short, speech_like(30.0, seed=5), 16000)
    long_.parent.mkdir()
    write_long_wav(long_, duration_s)
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(short.parent), str(long_.parent),
         str(tmp_path), str(models["language"]), str(models["emotion-multi"]), str(chunk_s)],
        capture_output=True, text=True, timeout=1800, env=_env())
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = pd.read_parquet(tmp_path / "long.parquet", columns=["end_s"])
    assert len(rows) == int(duration_s // 3) and rows["end_s"].max() == pytest.approx(duration_s)
    return {**figures, "growth_mb": figures["peak_mb"] - figures["baseline_mb"],
            "float32_mb": duration_s * 16000 * 4 / 2**20}


def test_a_long_file_is_read_in_bounded_memory(tmp_path, models):
    """20 minutes in 60 s tasks: the run must grow by far less than the file's float32 size."""
    figures = measure_peak_rss(tmp_path, models, duration_s=1200.0, chunk_s=60.0)
    print(figures)
    assert figures["growth_mb"] < 0.5 * figures["float32_mb"], figures  # half of 73 MB


@pytest.mark.slow
def test_a_3_hour_file_does_not_need_3_hours_of_float32(tmp_path, models):
    """3 h at 16 kHz is 659 MiB as float32; with the default 600 s tasks far less is used.

    The audio is bounded (one task's span); what still grows with the
    recording's length are its segment features, held (in several copies)
    until the whole recording is annotated: see docs/reliability.md.
    """
    figures = measure_peak_rss(tmp_path, models, duration_s=3 * 3600.0,
                               chunk_s=annotate.pipeline.run.CHUNK_S)
    print(figures)
    assert figures["growth_mb"] < 0.5 * figures["float32_mb"], figures
