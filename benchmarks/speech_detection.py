"""Speech detection on audio no model here was trained on: the run's detectors beside Silero VAD.

Every figure comes from ``annotate.run`` (the command line's function) with
the bundled models, on real audio from ``../shared/corpora``:

- **non-speech**: ESC-10 clips (dog bark, rain, sea waves, baby cry, clock
  tick, sneeze, helicopter, chainsaw, rooster, fire crackling) and game-music
  excerpts: the share of their duration labelled speech (the segments whose
  ``speech`` is true, which get a language and an emotion);
- **speech**: the share of files with at least one speech row (RAVDESS,
  EmoDB, EMOVO, Common Voice, speechocean762: accented adults and children);
- **mixtures**: speech files mixed with an ESC clip or a music excerpt at 10 dB
  SNR (the speech's power over its active 25 ms frames against the bed's),
  the share of the segments that held speech in the clean file (0.3 s of
  active frames) that stay speech.

Systems: ``energy`` (``--speech-detector energy``, the gate of 0.1),
``silero-only`` (Silero VAD alone), ``silero`` (the default: Silero VAD, then
the speech head on the backbone's states for the segments it is unsure of)
and, as the anchor, Silero VAD as faster-whisper runs it
(``faster_whisper.vad.get_speech_timestamps`` with its default options over
each whole file: a segment is speech when its timestamps cover 0.25 s of it),
skipped with a note when faster-whisper is missing. The thresholds were chosen
on validation folds, tracks and speakers (ESC folds 1-2, four of the eight
music tracks, RAVDESS actors 1-10); ``val`` and ``test`` rows split them so.

Usage: python benchmarks/speech_detection.py --corpora ../shared/corpora [--work DIR]
       [--mixtures 250] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

import annotate
from annotate.audio.decode import probe, read_span

SR = 16000
#: Music tracks used for validation (the rest are test).
VALIDATION_TRACKS = ("aberrations", "advanced_simulacra", "enemy_unknown", "frontiers")
SNR_DB = 10.0


def audio(path: str | Path) -> np.ndarray:
    info = probe(path)
    return read_span(path, info, 0.0, info.duration_s, SR)


def nonspeech_sets(corpora: Path) -> dict[str, list[str]]:
    esc = sorted(str(p) for p in (corpora / "nonspeech" / "esc10").rglob("*.ogg"))
    music = sorted(str(p) for p in (corpora / "nonspeech" / "music").glob("*.flac"))
    fold = lambda p: Path(p).name.split("-")[0]  # noqa: E731
    track = lambda p: Path(p).stem.rsplit("_", 1)[0]  # noqa: E731
    return {
        "ESC-10 val (folds 1-2)": [p for p in esc if fold(p) in ("1", "2")],
        "ESC-10 test (fold 3)": [p for p in esc if fold(p) == "3"],
        "music val": [p for p in music if track(p) in VALIDATION_TRACKS],
        "music test": [p for p in music if track(p) not in VALIDATION_TRACKS],
    }


def speech_sets(corpora: Path) -> dict[str, list[str]]:
    ravdess = sorted(str(p) for p in (corpora / "ravdess").rglob("*.flac"))
    actor = lambda p: int(Path(p).parent.name.split("_")[1])  # noqa: E731
    return {
        "RAVDESS actors 1-10 (val)": [p for p in ravdess if actor(p) <= 10],
        "RAVDESS actors 11-20": [p for p in ravdess if actor(p) > 10],
        "EmoDB": sorted(str(p) for p in (corpora / "emodb" / "wav").glob("*.flac")),
        "EMOVO": sorted(str(p) for p in (corpora / "emovo").rglob("*.flac")),
        "Common Voice": sorted(str(p) for p in (corpora / "commonvoice").rglob("clips/*.mp3")),
        "speechocean762": sorted(str(p) for p in (corpora / "speechocean762").rglob("*.flac")),
    }


def active_frames(x: np.ndarray) -> np.ndarray:
    """25 ms frames within 30 dB of the loudest: where the clean speech is."""
    frame = int(0.025 * SR)
    n = len(x) // frame
    rms = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12)
    level = 20 * np.log10(rms)
    return level > level.max() - 30


def mixtures(sets: dict, beds: dict, work: Path, count: int, seed: int = 0) -> tuple[list, dict]:
    """Speech files over music or ESC beds at 10 dB SNR; which segments held speech."""
    rng = np.random.default_rng(seed)
    speech = (rng.permutation(sets["Common Voice"])[: count * 2 // 5].tolist()
              + rng.permutation(sets["RAVDESS actors 11-20"])[: count * 2 // 5].tolist()
              + rng.permutation(sets["speechocean762"])[: count // 5].tolist())
    bed_files = {"music": beds["music test"], "ESC-10": beds["ESC-10 test (fold 3)"]}
    paths, truth = [], {}
    folder = work / "mixtures"
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(speech):
        clean = audio(source)
        active = active_frames(clean)
        frame = int(0.025 * SR)
        power = float((clean[: len(active) * frame].reshape(-1, frame)[active] ** 2).mean())
        for kind, files in bed_files.items():
            bed = audio(files[rng.integers(len(files))])
            bed = np.resize(np.roll(bed, rng.integers(len(bed))), len(clean))
            gain = np.sqrt(power / (float((bed**2).mean()) + 1e-12) / 10 ** (SNR_DB / 10))
            mixed = clean + gain * bed
            mixed /= max(1.0, float(np.abs(mixed).max()) / 0.99)
            path = folder / f"{kind}-{i:04d}.wav"
            sf.write(path, mixed, SR)
            starts = np.arange(0, len(clean), 3 * SR)
            held = [active[s // frame : (s + 3 * SR) // frame].sum() * 0.025 >= 0.3
                    for s in starts]
            truth[path.name] = (kind, np.array(held))
            paths.append(str(path))
    return paths, truth


def run_detector(paths: list[str], work: Path, name: str, detector: str) -> pd.DataFrame:
    manifest = work / f"{name}.csv"
    pd.DataFrame({"path": paths}).to_csv(manifest, index=False)
    out = work / f"{name}-{detector}.parquet"
    annotate.run([manifest], out, speech_detector=detector, overwrite=True, jobs=2)
    return pd.read_parquet(out)


def anchor_rows(paths: list[str]) -> pd.DataFrame | None:
    """Silero VAD as faster-whisper runs it, per 3 s segment (None without faster-whisper)."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ImportError:
        return None
    rows = []
    for path in paths:
        x = audio(path)
        spans = get_speech_timestamps(x.copy(), VadOptions())  # it writes into its input
        covered = np.zeros(len(x), bool)
        for span in spans:
            covered[span["start"] : span["end"]] = True
        for start in range(0, len(x), 3 * SR):
            seconds = covered[start : start + 3 * SR].sum() / SR
            end = min(start + 3 * SR, len(x))
            rows.append({"path": path, "start_s": start / SR, "end_s": end / SR,
                         "speech": seconds >= min(0.25, (end - start) / SR / 2)})
    return pd.DataFrame(rows)


def share_labelled(rows: pd.DataFrame) -> float:
    duration = rows["end_s"] - rows["start_s"]
    return float(duration[rows["speech"]].sum() / duration.sum())


def files_with_speech(rows: pd.DataFrame) -> tuple[int, int]:
    found = rows.groupby("path")["speech"].any()
    return int(found.sum()), int(len(found))


def kept(rows: pd.DataFrame, truth: dict, kind: str) -> float:
    hits = total = 0
    for path, group in rows.groupby("path"):
        name = Path(path).name
        if truth[name][0] != kind:
            continue
        held = truth[name][1]
        decided = group.sort_values("start_s")["speech"].to_numpy()[: len(held)]
        hits += int((decided & held[: len(decided)]).sum())
        total += int(held[: len(decided)].sum())
    return hits / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=Path("../shared/corpora"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--mixtures", type=int, default=250)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.corpora = args.corpora.resolve()  # the manifests hold absolute paths
    work = args.work or Path(tempfile.mkdtemp(prefix="annotate-vad-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    beds, speech = nonspeech_sets(args.corpora), speech_sets(args.corpora)
    mixed, truth = mixtures(speech, beds, work, args.mixtures)
    systems = ("energy", "silero-only", "silero", "anchor")
    table: dict[str, dict[str, str]] = {}
    for name, paths in [*beds.items(), *speech.items(), ("mixtures", mixed)]:
        key = name.split(" (")[0].replace(" ", "_")
        row = {}
        for system in systems:
            rows = (anchor_rows(paths) if system == "anchor"
                    else run_detector(paths, work, key, system))
            if rows is None:
                row[system] = "n/a"
            elif name in beds:
                row[system] = f"{share_labelled(rows):.3f}"
            elif name == "mixtures":
                row[system] = (f"music {kept(rows, truth, 'music'):.3f}, "
                               f"ESC {kept(rows, truth, 'ESC-10'):.3f}")
            else:
                found, total = files_with_speech(rows)
                row[system] = f"{found}/{total} ({found / total:.3f})"
        table[name] = row
        print(f"{name}: {row}  ({time.time() - started:.0f} s)", flush=True)
    print("\n| set | measure | energy gate | silero-only | silero (default) "
          "| Silero VAD, faster-whisper |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        measure = ("share of duration labelled speech" if name in beds
                   else "speech segments kept at 10 dB SNR" if name == "mixtures"
                   else "files with speech rows")
        print(f"| {name} | {measure} | {row['energy']} | {row['silero-only']} "
              f"| {row['silero']} | {row['anchor']} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
