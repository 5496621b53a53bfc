"""Throughput benchmark: `annotate run` as a user runs it, against its floor and a naive loop.

Builds corpora of 16 kHz WAV in 60 s files (10 min, 30 min and 2 h), 48 kHz MP3
(30 min) and one 2-hour WAV file, from concatenated real clips of
``--corpora`` when present, otherwise from speech-like synthetic audio. For
each it runs ``annotate run`` in a subprocess with the default settings and
reports wall time, multiples of real time, CPU time, peak RSS of the whole
process tree (sampled every 50 ms), and the time to the first written part.
On the same audio it measures the floor (decoding plus log-mel features, no
model, with the run's parallelism and the models' feature settings), the
networks alone (the language and an emotion model on every speech segment),
their sum (the arithmetic a run cannot avoid), and a naive baseline (one file
at a time: librosa.load, features, model.predict per window; timed on a
subset and scaled per audio hour).

Usage: python benchmarks/throughput.py [--corpora ../shared/corpora] [--work /tmp/annotate-bench]
       [--language-model DIR --emotion-model LANG=DIR ...] [--quick]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def source_audio(corpora: Path | None, seconds: float) -> np.ndarray:
    """About ``seconds`` of 16 kHz speech: real clips looped, or synthetic."""
    from annotate.audio.decode import probe, read_span

    files = []
    if corpora and corpora.is_dir():
        for pattern in ("emodb/**/*.flac", "emovo/**/*.flac", "ravdess/**/*.flac",
                        "commonvoice/**/*.mp3"):
            files += sorted(glob.glob(str(corpora / pattern), recursive=True))
    pieces, total = [], 0
    if files:
        for path in files:
            info = probe(path)
            piece = read_span(path, info, 0.0, info.duration_s, SR)
            pieces.append(piece)
            total += len(piece)
            if total >= seconds * SR:
                break
        base = np.concatenate(pieces)
    else:
        from annotate.testing import speech_like

        base = np.concatenate([speech_like(30.0, SR, seed=i) for i in range(int(seconds // 30) + 1)])
    reps = int(np.ceil(seconds * SR / len(base)))
    return np.tile(base, reps)[: int(seconds * SR)].astype(np.float32)


def build_corpus(folder: Path, audio: np.ndarray, file_s: float, rate: int, fmt: str) -> float:
    if folder.exists():
        return sum(sf.info(p).duration for p in folder.iterdir())
    import soxr

    folder.mkdir(parents=True)
    step = int(file_s * SR)
    for i, start in enumerate(range(0, len(audio), step)):
        piece = audio[start : start + step]
        if rate != SR:
            piece = soxr.resample(piece, SR, rate)
        ext = "mp3" if fmt == "MP3" else "wav"
        sf.write(folder / f"{i:05d}.{ext}", piece, rate, format=fmt,
                 subtype="MPEG_LAYER_III" if fmt == "MP3" else "PCM_16")
    return len(audio) / SR


def tree_rss(pid: int) -> int:
    """Resident memory in bytes of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total


def run_annotate(corpus: Path, out: Path, model_args: list[str]) -> dict:
    for stale in (out, out.with_name(out.stem + ".failures.parquet")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    cmd = [sys.executable, "-m", "annotate", "run", str(corpus), "-o", str(out), "-q", *model_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak, first = 0, None
    parts = out.with_name(out.name + ".partial") / "parts"
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if first is None and parts.is_dir() and any(parts.glob("*.parquet")):
            first = time.perf_counter() - start
        time.sleep(0.05)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"annotate run failed with exit code {proc.returncode}")
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mib": peak / 2**20,
        "first_result_s": first if first is not None else wall,
    }


def floor(corpus: Path, jobs: int, params: tuple) -> tuple[float, list]:
    """Decoding plus log-mel features alone, as the run does them.

    Same parallelism (the run's ``--workers auto`` choice for ``jobs``),
    chunking and feature settings (``params``: those of the run's models),
    worker start-up included, no model. Also returns the chunk results.
    """
    from joblib import delayed
    from joblib.externals.loky import get_reusable_executor

    from annotate.audio.discover import discover
    from annotate.pipeline.featurize import SegmentSettings, featurize_chunk, plan_chunks
    from annotate.pipeline.local import CHUNK_S
    from annotate.pipeline.workers import parallel_features, resolve_workers

    # The run starts its workers; so does the floor (joblib would reuse warm ones).
    get_reusable_executor().shutdown(wait=True)
    settings = SegmentSettings()
    workers = resolve_workers("auto", jobs)
    start = time.perf_counter()
    recordings, _ = discover([corpus])
    chunks = [c for i, r in enumerate(recordings) for c in plan_chunks(i, r, settings, CHUNK_S)]
    parallel, limits = parallel_features(jobs, workers, return_as="generator")
    with limits:
        results = list(parallel(delayed(featurize_chunk)(c, settings, params) for c in chunks))
    return time.perf_counter() - start, results


def start_up_s() -> float:
    """What every run pays before its first feature: the interpreter and its imports.

    Median of 3 fresh interpreters importing what ``annotate run`` imports
    (pyarrow pulls in pandas on its first conversion).
    """
    code = ("import annotate.cli, annotate.pipeline.local, annotate.pipeline.annotator, "
            "annotate.modelling.inference, annotate.pipeline.featurize, pandas, "
            "ai_edge_litert.interpreter")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def network_ms_per_segment(models, results: list) -> float:
    """Milliseconds per speech segment for the language model plus one emotion model.

    Every speech segment goes through both, whatever the routing (the
    emotion networks share one architecture); measured on the run's backends
    with the corpus's own features.
    """
    from annotate.modelling.inference import Classifier

    backends = dict(zip(map(id, models.specs), models.choose_backends(), strict=True))
    emotion = next(iter(models.emotion.values()))
    cost = 0.0
    for spec in (models.language, emotion):
        features = [r.features[spec.features] for r in results if r.features]
        n = sum(len(f) for f in features)
        classifier = Classifier(spec, backends[id(spec)]).load()
        classifier.logits(features[:1])  # first call
        start = time.perf_counter()
        classifier.logits(features)
        cost += (time.perf_counter() - start) / n * 1e3
    return cost


def naive(corpus: Path, model_dir: Path, budget_s: float) -> tuple[float, float]:
    """One file at a time: librosa.load, features, model.predict per window.

    Returns (seconds, audio seconds processed) for as many files as fit in ``budget_s``.
    """
    import librosa

    from annotate.features import segment_features
    from annotate.modelling.inference import tensorflow
    from annotate.modelling.model_folder import read_model_folder

    spec = read_model_folder(model_dir)
    model = tensorflow().keras.models.load_model(spec.weights_path, compile=False)
    files = sorted(corpus.iterdir())
    start, audio_s = time.perf_counter(), 0.0
    for path in files:
        samples, _ = librosa.load(path, sr=SR, mono=True)
        for lo in range(0, len(samples), 3 * SR):
            window = samples[lo : lo + 3 * SR]
            model.predict(segment_features(window, spec.features)[None], verbose=0)
        audio_s += len(samples) / SR
        if time.perf_counter() - start > budget_s:
            break
    return time.perf_counter() - start, audio_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, default=Path("../shared/corpora"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/annotate-bench"))
    parser.add_argument("--language-model", type=Path)
    parser.add_argument("--emotion-model", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="only the 30 min WAV corpus")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    model_args = []
    if args.language_model:
        model_args += ["--language-model", str(args.language_model)]
    for item in args.emotion_model:
        model_args += ["--emotion-model", item]
    from annotate.modelling.model_folder import bundled_models_dir
    from annotate.modelling.model_set import ModelSet

    language_dir = args.language_model or bundled_models_dir() / "language"
    emotion = dict(item.split("=", 1) for item in args.emotion_model)
    models = ModelSet.load(args.language_model, emotion)
    feature_params = models.feature_params
    jobs = os.cpu_count() or 1
    args.work.mkdir(parents=True, exist_ok=True)
    audio = source_audio(args.corpora, 7200.0)
    corpora = {
        "wav16k_10min": (args.work / "wav16k_10min", audio[: 600 * SR], 60.0, SR, "WAV"),
        "wav16k_30min": (args.work / "wav16k_30min", audio[: 1800 * SR], 60.0, SR, "WAV"),
        "wav16k_2h": (args.work / "wav16k_2h", audio, 60.0, SR, "WAV"),
        "mp3_48k_30min": (args.work / "mp3_48k_30min", audio[: 1800 * SR], 60.0, 48000, "MP3"),
        "wav16k_one_2h_file": (args.work / "wav16k_one_2h_file", audio, 7200.0, SR, "WAV"),
    }
    if args.quick:
        corpora = {"wav16k_30min": corpora["wav16k_30min"]}
    rows = {}
    network_ms = None
    for name, (folder, samples, file_s, rate, fmt) in corpora.items():
        duration = build_corpus(folder, samples, file_s, rate, fmt)
        result = run_annotate(folder, args.work / f"{name}.parquet", model_args)
        result["audio_s"] = duration
        result["x_real_time"] = duration / result["wall_s"]
        result["s_per_audio_hour"] = result["wall_s"] / (duration / 3600)
        result["floor_s"], chunk_results = floor(folder, jobs, feature_params)
        result["run_over_floor"] = result["wall_s"] / result["floor_s"]
        if network_ms is None:
            network_ms = network_ms_per_segment(models, chunk_results)
        segments = sum(len(r.speech) for r in chunk_results)
        speech = sum(int(r.speech.sum()) for r in chunk_results)
        del chunk_results
        # What the arithmetic alone takes: features with the run's parallelism,
        # then both networks on every speech segment with LiteRT's threads.
        result["networks_s"] = speech * network_ms / 1e3
        result["arithmetic_s"] = result["floor_s"] + result["networks_s"]
        result["run_over_arithmetic"] = result["wall_s"] / result["arithmetic_s"]
        result["segments"], result["speech_segments"] = segments, speech
        rows[name] = result
        print(f"{name}: {json.dumps({k: round(v, 3) for k, v in result.items()})}", flush=True)
    start_s = start_up_s()
    naive_s, naive_audio = naive(corpora["wav16k_30min"][0], language_dir, budget_s=60.0)
    naive_x = naive_audio / naive_s
    print()
    from annotate.pipeline.workers import resolve_workers

    print(f"machine: {platform.processor() or platform.machine()}, {jobs} cores, "
          f"python {platform.python_version()}; feature workers: {resolve_workers('auto', jobs)}; "
          f"networks: {network_ms:.2f} ms per speech segment (language + emotion); "
          f"interpreter and imports: {start_s:.2f} s")
    print(f"{'corpus':22} {'audio h':>8} {'wall s':>8} {'x RT':>8} {'CPU s':>8} {'RSS MiB':>8} "
          f"{'first s':>8} {'floor s':>8} {'run/floor':>9} {'nets s':>8} {'run/arith':>9} "
          f"{'s/audio h':>9}")
    for name, r in rows.items():
        print(f"{name:22} {r['audio_s'] / 3600:8.2f} {r['wall_s']:8.2f} {r['x_real_time']:8.0f} "
              f"{r['cpu_s']:8.1f} {r['peak_rss_mib']:8.0f} {r['first_result_s']:8.1f} "
              f"{r['floor_s']:8.2f} {r['run_over_floor']:9.2f} {r['networks_s']:8.2f} "
              f"{r['run_over_arithmetic']:9.2f} {r['s_per_audio_hour']:9.2f}")
    run_x = rows["wav16k_30min"]["x_real_time"]
    print(f"naive baseline (language model only, {naive_audio / 60:.1f} min timed): "
          f"{naive_x:.0f}x real time; run/naive speed-up: {run_x / naive_x:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "naive_x_real_time": naive_x,
                                         "network_ms_per_segment": network_ms,
                                         "start_up_s": start_s}, indent=2))


if __name__ == "__main__":
    main()
