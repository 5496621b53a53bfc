"""Fit the speech detector's second stage: a speech head on the backbone's states.

Run by ``make models`` after the backbone is built. Silero VAD misses some
speech that it is unsure of (shouted, screamed speech: its frames reach
0.2-0.8 but stay under the threshold); Whisper's hidden states know it for
speech. The head (:mod:`annotate.modelling.speech_head`) is an L2-regularised
logistic regression on one layer's pooled states, fitted on:

- speech: the segments Silero finds speech in the training speakers of
  EmoDB, EMOVO, RAVDESS, Common Voice and speechocean762
  (``annotate.training.heldout``);
- non-speech: every segment of the validation non-speech audio (ESC-10
  folds 1-2, the validation music tracks), the same audio the detector's
  threshold was chosen on.

The threshold is chosen out of fold (two folds: ESC fold 1 and two music
tracks with half of the speakers, against the rest): the lowest of
:data:`THRESHOLDS` at which no validation non-speech segment that the run
would check (Silero unsure: a frame at ``UNSURE_P`` or above, but not
speech) is found speech. The test audio (ESC-10 fold 3, the other music
tracks, the held-out speakers) is never read here.

The states are those of the run's own backbone (``models/whisper-base``, the
int8 exports), the states the head reads at run time.

Usage: python scripts/fit_speech_head.py --corpora ../shared/corpora
       [--backbone models/whisper-base] [--out models/speech-head]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_bundled_models import training_items  # noqa: E402

from annotate.audio.discover import Recording  # noqa: E402
from annotate.backbone.runtime import Backbone  # noqa: E402
from annotate.modelling.backbone_folder import read_backbone_folder  # noqa: E402
from annotate.modelling.model_folder import file_sha256  # noqa: E402
from annotate.modelling.speech_head import write_speech_head  # noqa: E402
from annotate.prepare.featurize import SegmentSettings, featurize_recording  # noqa: E402

#: The hidden state the head reads (the last one the run's LiteRT export gives).
LAYER = 4
#: Silero's frame probability from which a segment that is not speech is checked.
UNSURE_P = 0.15
#: Inverse regularisation strength, on standardised states.
C = 0.001
#: Thresholds tried, lowest first.
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
#: Validation music tracks (the speech detector's; the other tracks are test).
VALIDATION_TRACKS = ("aberrations", "advanced_simulacra", "enemy_unknown", "frontiers")
SPEECH_CORPORA = ("emodb", "emovo", "ravdess", "commonvoice", "speechocean762")

CARD = """# speech-head: the second stage of the speech detector

**What it is.** A logistic regression on the pooled hidden state {layer} of
`{backbone}` (mean and standard deviation over the segment's frames, {width}
numbers; the run's int8 exports), fitted by `scripts/fit_speech_head.py`.
`annotate run` asks it only about the segments Silero VAD is unsure of: not
speech, but with a 32 ms frame at probability {unsure_p} or above. Those are
encoded like speech segments; where this head gives {threshold} or more, the
segment is speech (its `speech_p` is the head's probability, its `speech_s`
the seconds of its frames at {unsure_p} or above), else it is not.

**Why.** Silero misses shouted and screamed speech (RAVDESS's strong angry,
fearful and happy clips): its frames reach 0.2-0.8 without passing the 0.5
threshold. Whisper was trained on such speech; its states tell it from
sneezes, music and street noise.

**Fitted on** {n_speech} speech segments (Silero's speech in the training
speakers of EmoDB, EMOVO, RAVDESS, Common Voice and speechocean762) and
{n_nonspeech} non-speech segments (ESC-10 folds 1-2, music tracks
{tracks}); C = {c} on standardised states.

**Threshold** {threshold}: the lowest of {thresholds} at which, out of fold
(two folds of sounds, tracks and speakers), no validation non-speech segment
that the run would check is found speech. Out of fold at that threshold:
{oof_found} of {oof_speech} unsure speech segments found speech, {oof_false}
of {oof_nonspeech} unsure non-speech segments.

**Measured** on test audio (ESC-10 fold 3, the other music tracks, held-out
speakers): `docs/accuracy.md`, "Speech detection".

**Licence.** The head's weights are this project's. It inherits the terms
of what it was fitted on: RAVDESS (CC BY-NC-SA 4.0) and EMOVO are
non-commercial research data; ESC-10 is CC BY 3.0.
"""


def nonspeech_items(corpora: Path) -> pd.DataFrame:
    """ESC-10 folds 1-2 and the validation music tracks, with their fold."""
    rows = []
    for path in sorted((corpora / "nonspeech" / "esc10").rglob("*.ogg")):
        fold = path.name.split("-")[0]
        if fold in ("1", "2"):
            rows.append({"path": str(path), "fold": int(fold) - 1})
    for path in sorted((corpora / "nonspeech" / "music").glob("*.flac")):
        track = path.stem.rsplit("_", 1)[0]
        if track in VALIDATION_TRACKS:
            rows.append({"path": str(path), "fold": VALIDATION_TRACKS.index(track) % 2})
    return pd.DataFrame(rows)


def speech_items(corpora: Path) -> pd.DataFrame:
    """The training speakers' recordings, with a fold by a hash of the speaker."""
    items = training_items(corpora, list(SPEECH_CORPORA))
    fold = [hashlib.sha256(f"{c}:{s}".encode()).digest()[0] % 2
            for c, s in zip(items["corpus"], items["speaker"], strict=True)]
    return pd.DataFrame({"path": items["path"].astype(str), "fold": fold})


def segments_of(path: str, params) -> tuple | None:
    """Silero's decisions on every segment of a recording and every segment's features."""
    # A floor of almost zero: every segment is "unsure" and gets its features.
    settings = SegmentSettings(unsure_p=1e-9)
    done = featurize_recording(Recording(path, path), settings, (params,))
    if not hasattr(done, "bounds"):
        return None
    return (done.speech, done.speech_p, done.encoded, done.bounds,
            np.concatenate(done.features[params]))


def encode(paths: list[str], folds: list[int], spec, jobs: int) -> pd.DataFrame:
    """One row per encoded segment: its recording, fold, Silero's view, and its states."""
    params = spec.features
    results = Parallel(n_jobs=jobs)(delayed(segments_of)(p, params) for p in paths)
    rows, stacks, frames = [], [], []
    for path, fold, result in zip(paths, folds, results, strict=True):
        if result is None:
            print(f"skipped {path}: unreadable")
            continue
        speech, probability, encoded, bounds, features = result
        held = np.flatnonzero(encoded)
        for i in held:
            rows.append({"path": path, "fold": fold, "speech": bool(speech[i]),
                         "silero_p": float(probability[i])})
        stacks.append(features)
        frames.append(params.segment_frames(bounds[held, 1] - bounds[held, 0]))
    runner = Backbone(spec, (LAYER,), "litert", params.n_frames).load()
    pooled = runner.pooled(stacks, np.concatenate(frames))[:, 0]
    table = pd.DataFrame(rows)
    table["state"] = list(pooled.astype(np.float64))
    return table


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Weights and bias on the raw states, and the standardisation, of an L2 logistic regression."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale

    def loss(theta):
        w, b = theta[:-1], theta[-1]
        logits = z @ w + b
        # C * sum(log-loss) + |w|^2 / 2, and its gradient
        value = C * np.sum(np.logaddexp(0.0, logits) - y * logits) + 0.5 * w @ w
        p = 1.0 / (1.0 + np.exp(-logits))
        grad = C * np.concatenate([z.T @ (p - y), [np.sum(p - y)]])
        grad[:-1] += w
        return value, grad

    theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                     options={"maxiter": 2000}).x
    w, b = theta[:-1], theta[-1]
    return w / scale, float(b - np.sum(w * mean / scale)), mean, scale


def probability(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x @ w + b, -60, 60)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=Path("../shared/corpora"))
    parser.add_argument("--backbone", type=Path, default=ROOT / "models" / "whisper-base")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "speech-head")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    spec = read_backbone_folder(args.backbone)
    nonspeech, speech = nonspeech_items(args.corpora), speech_items(args.corpora)
    print(f"encoding {len(nonspeech)} non-speech and {len(speech)} speech recordings")
    table = pd.concat([
        encode(nonspeech["path"].tolist(), nonspeech["fold"].tolist(), spec, args.jobs)
        .assign(is_speech=False),
        encode(speech["path"].tolist(), speech["fold"].tolist(), spec, args.jobs)
        .assign(is_speech=True),
    ], ignore_index=True)
    # Speech: what Silero calls speech in speech recordings; non-speech: every segment.
    train = table[~table["is_speech"] | table["speech"]]
    checked = ~table["speech"] & (table["silero_p"] >= UNSURE_P)
    x_all = np.stack(table["state"].to_numpy())
    out_of_fold = np.zeros(len(table))
    for fold in (0, 1):
        part = train[train["fold"] != fold]
        w, b, _, _ = fit(np.stack(part["state"].to_numpy()), part["is_speech"].to_numpy(float))
        mine = (table["fold"] == fold).to_numpy()
        out_of_fold[mine] = probability(w, b, x_all[mine])
    print("threshold | unsure non-speech found speech | unsure speech found speech")
    chosen = None
    for t in THRESHOLDS:
        false = int((checked & ~table["is_speech"] & (out_of_fold >= t)).sum())
        found = int((checked & table["is_speech"] & (out_of_fold >= t)).sum())
        print(f"{t:.2f} | {false} of {int((checked & ~table['is_speech']).sum())} | "
              f"{found} of {int((checked & table['is_speech']).sum())}")
        if chosen is None and false == 0:
            chosen = (t, found, false)
    if chosen is None:
        raise SystemExit("no threshold keeps the validation non-speech out")
    threshold, found, false = chosen
    w, b, _, _ = fit(np.stack(train["state"].to_numpy()), train["is_speech"].to_numpy(float))
    head = {
        "format": "annotate-speech-head/1",
        "backbone": spec.name,
        # The export it read, not the folder: scripts/fit_language_id.py rewrites the
        # folder's backbone.json after this, so its hash would change at every rebuild.
        "encoder_sha256": file_sha256(spec.folder / spec.litert.file),
        "width": int(len(w)),
        "layer": LAYER,
        "threshold": threshold,
        "unsure_p": UNSURE_P,
        "bias": round(b, 8),
        "weights": [float(f"{v:.8g}") for v in w],
    }
    n_speech, n_nonspeech = int(train["is_speech"].sum()), int((~train["is_speech"]).sum())
    card = CARD.format(layer=LAYER, backbone=spec.name, width=len(w), unsure_p=UNSURE_P,
                       threshold=threshold, n_speech=n_speech, n_nonspeech=n_nonspeech,
                       tracks=", ".join(VALIDATION_TRACKS), c=C, thresholds=THRESHOLDS,
                       oof_found=found, oof_speech=int((checked & table["is_speech"]).sum()),
                       oof_false=false,
                       oof_nonspeech=int((checked & ~table["is_speech"]).sum()))
    write_speech_head(args.out, head, card)
    print(f"wrote {args.out}: threshold {threshold}, {n_speech} speech and {n_nonspeech} "
          "non-speech segments")


if __name__ == "__main__":
    main()
