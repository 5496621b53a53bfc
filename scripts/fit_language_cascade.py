"""Fit the language cascade on validation speakers: when to ask Whisper, and how to fuse.

Run by ``make models`` after ``scripts/train_bundled_models.py``. The bundled
language head is sure of most segments; where it is unsure, Whisper's own
language identification (``language.tflite``) is asked too and the two are
fused (:mod:`annotate.modelling.language_fusion`). This script chooses the
threshold and the fusion weights on the training speakers only
(``annotate.training.heldout``), the way the head's own settings were:

- the head's logits out of fold: the head's settings and folds, retrained
  without each fold's speakers (on the same recordings and augmented copies
  as the bundled head), score that fold;
- the same Common Voice clips in the telephone band (300-3400 Hz, 8 kHz),
  scored by the head of their speaker's fold: the channel the head is least
  sure of;
- Whisper's language logits on the same segments, through the backbone's
  exports, with its fitted temperature (``scripts/fit_language_id.py``).

Each corpus weighs the same in the accuracy the threshold is chosen on; the
lowest threshold within 0.002 of the best wins (the cheapest that is as
good). Then the context step, the same way: which recordings, still unsure
after the cascade, are asked once more with Whisper's own context (their
speech joined and padded to a 10 s window, as a run builds it) and the
weight of that answer (:func:`annotate.modelling.language_fusion.fit_context`). The choice and its validation table go into the language model's
``model.json`` (``cascade``) and its card; the weights files stay as they are.

Usage: python scripts/fit_language_cascade.py --corpora ../shared/corpora [--models models]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_bundled_models import SEED, training_recordings  # noqa: E402

from annotate.backbone.whisper_language import LANGUAGE_CODES  # noqa: E402
from annotate.modelling.backbone_folder import read_backbone_folder  # noqa: E402
from annotate.modelling.inference import choose_backbone_backend  # noqa: E402
from annotate.modelling.language_fusion import (  # noqa: E402
    CONTEXT_THRESHOLDS,
    CONTEXT_WINDOW_FRAMES,
    fit_cascade,
    fit_context,
)
from annotate.modelling.model_folder import (  # noqa: E402
    SPEC_FILE,
    LanguageCascade,
    read_model_folder,
    write_model_folder,
)
from annotate.modelling.posteriors import apply_cascade, softmax  # noqa: E402
from annotate.training.calibration import (  # noqa: E402
    context_language_probs,
    whisper_language_logits,
)
from annotate.training.cards import head_card  # noqa: E402
from annotate.training.encoding import Copies, default_cache_dir, encode_items  # noqa: E402
from annotate.training.metrics import expected_calibration_error  # noqa: E402
from annotate.training.reference import reference_backbone  # noqa: E402
from annotate.training.search import fold_heads, speaker_folds  # noqa: E402

#: Corpora whose recordings Whisper scores (espeak's synthetic voices train the head only).
SCORED = ("commonvoice", "speechocean762", "emodb", "emovo", "ravdess")


def telephone_copies(items: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """``items`` through a telephone channel at 8 kHz, written to ``folder`` once."""
    import soundfile as sf
    import soxr

    from annotate.audio.decode import probe, read_span
    from annotate.training.augment import telephone

    out = items.copy()
    for i, path in enumerate(items["path"]):
        target = folder / f"{i:05d}-{Path(path).stem}.wav"
        if not target.is_file():
            info = probe(path)
            samples = telephone(read_span(path, info, 0, info.duration_s, 16000), 16000)
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, soxr.resample(samples, 16000, 8000), 8000, subtype="PCM_16")
        out.loc[i, "path"] = str(target)
    out["corpus"] = "telephone"
    return out


def whisper_probs(backbone, items: pd.DataFrame, columns: list[int], jobs) -> np.ndarray:
    """Whisper's calibrated probabilities of the ``columns`` languages, per speech segment."""
    logits, _, failures = whisper_language_logits(backbone, items, jobs=jobs)
    if failures:
        raise SystemExit(f"cannot read {failures[0].path}: {failures[0].message}")
    return softmax(logits[:, columns].astype(np.float64), backbone.language.temperature)


def context_probs(backbone, backend: str, recordings: pd.DataFrame, probs: np.ndarray,
                  owner: np.ndarray, durations: np.ndarray, columns: list[int],
                  jobs) -> np.ndarray:
    """Whisper's calibrated probabilities with its context, per recording.

    Asked, as a run asks, of each recording whose top probability after the
    cascade is below the highest context threshold tried (NaN for the rest):
    its speech segments joined into one window of
    :data:`~annotate.modelling.language_fusion.CONTEXT_WINDOW_FRAMES`.
    """
    from annotate.backbone.runtime import Backbone
    from annotate.modelling.posteriors import recording_means
    from annotate.training.training_data import load_recordings

    top = recording_means(probs, owner, durations, len(recordings)).max(axis=1)
    need = np.flatnonzero(top < max(CONTEXT_THRESHOLDS))
    print(f"context: {len(need)} of {len(recordings)} recordings below "
          f"{max(CONTEXT_THRESHOLDS)}", flush=True)
    loaded, failures = load_recordings(recordings.iloc[need], backbone.features, jobs)
    if failures:
        raise SystemExit(f"cannot read {failures[0].path}: {failures[0].message}")
    runner = Backbone(backbone, (0,), backend, backbone.features.n_frames)
    out = np.full((len(recordings), len(columns)), np.nan)
    out[need] = context_language_probs(runner, loaded, np.arange(len(need)), columns,
                                       backbone.language.temperature, CONTEXT_WINDOW_FRAMES)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--synthetic", type=Path, default=Path("/tmp/annotate-synthetic"),
                        help="espeak-ng's speech, as scripts/train_bundled_models.py wrote it")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    head = read_model_folder(args.models / "language")
    # Fitted on the float states, as the heads are (annotate.training.reference).
    backbone = reference_backbone(read_backbone_folder(args.models / head.backbone.name))
    if backbone.language is None:
        raise SystemExit(f"{backbone.folder} has no language export (scripts/build_backbone.py)")
    labels = list(head.labels)
    settings = head.training["settings"]
    layers = tuple(settings["layers"])
    backend = choose_backbone_backend(backbone, tuple(range(backbone.litert.n_layers + 1)))

    originals, copies = training_recordings(args.corpora, args.synthetic)
    speech = originals[originals["corpus"] == "commonvoice"].reset_index(drop=True)
    band = telephone_copies(speech, default_cache_dir() / "telephone-validation")
    encoded = encode_items(pd.concat([originals, copies, band], ignore_index=True), backbone,
                           backend, jobs=args.jobs)
    meta = encoded.meta.copy()
    meta["label"] = meta["language"]
    encoded = type(encoded)(meta, encoded.states, encoded.durations)
    is_band = (meta["corpus"] == "telephone").to_numpy()
    probes = encoded.subset(is_band)
    data, copy_data, copy_original = encoded.subset(~is_band).split_copies()
    y_rec = data.meta["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    speakers = (data.meta["corpus"].astype(str) + ":" + data.meta["speaker"].astype(str)).to_numpy()
    folds = speaker_folds(speakers, args.folds, SEED)

    # The head's logits out of fold, for the originals and their telephone-band versions.
    x, owner, durations = data.segments(layers)
    xp, owner_p, durations_p = probes.segments(layers)
    probe_speakers = ("commonvoice:" + probes.meta["speaker"].astype(str)).to_numpy()[owner_p]
    logits = np.zeros((len(x), len(labels)), np.float32)
    logits_p = np.zeros((len(xp), len(labels)), np.float32)
    for f, model in fold_heads(data, y_rec, len(labels), settings, folds, SEED,
                               Copies(copy_data, copy_original)):
        held = np.isin(owner, folds[f])
        logits[held] = model.predict(x[held], batch_size=256, verbose=0)
        held_p = np.isin(probe_speakers, speakers[folds[f]])
        logits_p[held_p] = model.predict(xp[held_p], batch_size=256, verbose=0)
        print(f"fold {f + 1} of {len(folds)}", flush=True)

    scored = data.meta["corpus"].isin(SCORED).to_numpy()
    columns = [LANGUAGE_CODES.index(code) for code in labels]
    whisper = np.concatenate([whisper_probs(backbone, data.meta[scored], columns, args.jobs),
                              whisper_probs(backbone, probes.meta, columns, args.jobs)])
    rows = scored[owner]
    head_p = softmax(np.concatenate([logits[rows], logits_p]).astype(np.float64),
                     head.temperature)
    renumber = np.cumsum(scored) - 1
    owners = np.concatenate([renumber[owner[rows]], scored.sum() + owner_p])
    truth = np.concatenate([y_rec[owner[rows]],
                            probes.meta["label"].map(labels.index).to_numpy()[owner_p]])
    group = np.concatenate([data.meta["corpus"].to_numpy()[scored],
                            probes.meta["corpus"].to_numpy()]).astype(str)
    if len(whisper) != len(head_p):
        raise SystemExit(f"{len(whisper)} segments for Whisper but {len(head_p)} for the head")
    all_durations = np.concatenate([durations[rows], durations_p])
    fit = fit_cascade(head_p, whisper, truth, owners, all_durations, group)
    names = sorted(set(group))
    print(f"{'threshold':>9} {'asked':>6} {'weights':>9} {'mean':>6} "
          + " ".join(f"{n[:11]:>11}" for n in names))
    for row in fit.table:
        print(f"{row['threshold']:>9} {row['asked']:>6.3f} "
              f"{row['head_weight']:>4}/{row['whisper_weight']:<4} {row['mean_accuracy']:>6.3f} "
              + " ".join(f"{row[n]:>11.3f}" for n in names))
    asked = head_p.max(axis=1) < fit.threshold
    fused = apply_cascade(head_p, whisper, fit.threshold, fit.head_weight, fit.whisper_weight)
    ece = {"head": float(expected_calibration_error(head_p, truth)),
           "cascade": float(expected_calibration_error(fused, truth))}
    print(f"chosen: threshold {fit.threshold}, weights {fit.head_weight} (head) / "
          f"{fit.whisper_weight} (Whisper), {asked.mean():.1%} of segments asked; segment ECE "
          f"{ece['head']:.3f} (head) -> {ece['cascade']:.3f}")
    recordings = pd.concat([data.meta[scored], probes.meta], ignore_index=True)
    context = context_probs(backbone, backend, recordings, fused, owners, all_durations,
                            columns, args.jobs)
    context_fit = fit_context(fused, context, truth, owners, all_durations, group)
    print(context_fit.report(names))
    counts = pd.Series(group).value_counts().reindex(names)
    cascade = LanguageCascade(
        threshold=fit.threshold, head_weight=fit.head_weight, whisper_weight=fit.whisper_weight,
        fitted_on=(f"speech segments of training speakers (annotate/training/heldout.py): "
                   f"{', '.join(f'{n} {c}' for n, c in counts.items())} recordings; head logits "
                   f"out of fold over {len(folds)} speaker folds, telephone: the Common Voice "
                   "clips band-limited, scored by their speaker's fold"),
        validation={"per_recording_accuracy": fit.table, "segment_ece": ece,
                    "asked": float(asked.mean()), "context": context_fit.table},
        context_threshold=context_fit.threshold, context_weight=context_fit.weight,
        context_window_frames=CONTEXT_WINDOW_FRAMES)
    head = dataclasses.replace(head, cascade=cascade)
    write_model_folder(head, head_card(head))
    print(f"wrote {head.folder / SPEC_FILE} and its card")


if __name__ == "__main__":
    main()
