"""Fit the temperature of Whisper's language identification on validation speakers.

Run by ``make models`` after ``scripts/build_backbone.py``. It runs the
backbone's language path (``model.tflite`` then ``language.tflite``, as
``annotate run --language-id whisper`` does) on every speech segment of the
training speakers (``annotate.training.heldout``; never the held-out ones)
of Common Voice and the actor corpora found under ``--corpora``, keeps the
scores of en/de/fr/it (the candidates the corpora can check), and fits the
one temperature that minimises their negative log-likelihood. Each corpus
weighs the same: at most ``--per-corpus`` recordings of each, drawn with a
fixed seed. The temperature and what it was fitted on go into
``backbone.json`` (``language.temperature``, ``language.fitted_on``); the
exports stay as they are.

Usage: python scripts/fit_language_id.py --corpora ../shared/corpora [--backbone models/whisper-base]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annotate.backbone.whisper_language import LANGUAGE_CODES  # noqa: E402
from annotate.modelling.backbone_folder import SPEC_FILE, read_backbone_folder  # noqa: E402
from annotate.modelling.posteriors import softmax  # noqa: E402
from annotate.training import heldout  # noqa: E402
from annotate.training.calibration import fit_temperature, whisper_language_logits  # noqa: E402
from annotate.training.corpora import read_corpus  # noqa: E402
from annotate.training.metrics import expected_calibration_error  # noqa: E402
from annotate.training.reference import reference_backbone  # noqa: E402

CANDIDATES = ("de", "en", "fr", "it")
CORPORA = ("commonvoice", "emodb", "emovo", "ravdess")
SEED = 20261202


def segment_logits(spec, items, jobs: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Whisper's language logits of every speech segment of ``items``, and each one's language."""
    logits, segments, failures = whisper_language_logits(spec, items, spec.features.segment_s,
                                                         jobs)
    for failure in failures:
        print(f"  skipped {failure.path}: {failure.message}")
    return logits, segments["language"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, default=ROOT / "models" / "whisper-base")
    parser.add_argument("--per-corpus", type=int, default=200,
                        help="recordings drawn from each corpus' training speakers")
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    # Fitted on the float states, as the heads are (annotate.training.reference).
    spec = reference_backbone(read_backbone_folder(args.backbone))
    if spec.language is None:
        raise SystemExit(f"{args.backbone} has no language export (scripts/build_backbone.py)")
    columns = [LANGUAGE_CODES.index(code) for code in CANDIDATES]
    logits, truth, used = [], [], []
    for name in CORPORA:
        if not (args.corpora / name).is_dir():
            continue
        items = heldout.split(read_corpus(name, args.corpora / name), "train").items
        if len(items) > args.per_corpus:
            items = items.sample(args.per_corpus, random_state=SEED).reset_index(drop=True)
        found, languages = segment_logits(spec, items, args.jobs)
        logits.append(found[:, columns].astype(np.float64))
        truth.append(np.array([CANDIDATES.index(code) for code in languages]))
        used.append(f"{name} {len(items)}")
        print(f"{name}: {len(items)} recordings, {len(found)} segments")
    if not logits:
        raise SystemExit(f"none of {', '.join(CORPORA)} under {args.corpora}")
    logits, truth = np.concatenate(logits), np.concatenate(truth)
    temperature = fit_temperature(logits, truth)
    before = softmax(logits)
    after = softmax(logits, temperature)
    print(f"accuracy {float((before.argmax(1) == truth).mean()):.3f} per segment over "
          f"{len(truth)} segments; temperature {temperature:.3f}; ECE "
          f"{expected_calibration_error(before, truth):.3f} -> "
          f"{expected_calibration_error(after, truth):.3f}")
    fitted_on = (f"speech segments of training speakers ({', '.join(used)} recordings; "
                 f"annotate/training/heldout.py), scores of {', '.join(CANDIDATES)}")
    language = dataclasses.replace(spec.language, temperature=round(float(temperature), 4),
                                   fitted_on=fitted_on)
    path = args.backbone / SPEC_FILE
    raw = json.loads(path.read_text())
    raw["language"] = language.to_json()
    path.write_text(json.dumps(raw, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
