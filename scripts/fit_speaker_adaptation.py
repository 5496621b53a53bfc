"""Refit the bundled emotion heads' temperatures for ``annotate run --speakers``, without retraining.

``annotate train`` (and so ``scripts/train_bundled_models.py``) fits this
temperature with every emotion head it writes
(:func:`annotate.training.calibration.fit_speaker_adaptation`). This script does
the same for heads already trained, from the same out-of-fold scores: each
head's recorded settings retrained without each of 4 speaker folds of its
training speakers (``annotate.training.heldout``), on the recordings
``train_bundled_models.py`` gave it, with its calibration temperature; each
corpus the head serves adapted as one run; the temperature with the least
negative log-likelihood. It rewrites ``speaker_adaptation`` in the head's
``model.json`` and its card; the weights stay as they are.

Usage: python scripts/fit_speaker_adaptation.py --corpora ../shared/corpora [--models models]
       [--only emotion-en,emotion-de]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_bundled_models import SEED, training_items  # noqa: E402

from annotate.modelling.backbone_folder import read_backbone_folder  # noqa: E402
from annotate.modelling.inference import choose_backbone_backend  # noqa: E402
from annotate.modelling.model_folder import read_model_folder, write_model_folder  # noqa: E402
from annotate.modelling.posteriors import softmax  # noqa: E402
from annotate.training.calibration import (  # noqa: E402
    calibration_rows,
    fit_speaker_adaptation,
)
from annotate.training.cards import head_card  # noqa: E402
from annotate.training.encoding import encode_items  # noqa: E402
from annotate.training.reference import reference_backbone  # noqa: E402
from annotate.training.search import out_of_fold_logits, speaker_folds  # noqa: E402

#: Per head: the corpora it trains on, as train_bundled_models.py gives them.
HEADS = {
    "emotion-de": ["emodb"],
    "emotion-en": ["ravdess"],
    "emotion-it": ["emovo", "emodb", "ravdess"],
    "emotion-multi": ["emodb", "emovo", "ravdess"],
}


def refit(name: str, models: Path, corpora: Path, backbone, backend, n_folds: int) -> None:
    """Fit head ``name``'s temperature and write it into its folder."""
    head = read_model_folder(models / name)
    labels = list(head.labels)
    settings = dict(head.training["settings"], layers=tuple(head.training["settings"]["layers"]))
    items = training_items(corpora, HEADS[name])
    items = items[items["label"].isin(labels)].reset_index(drop=True)
    data = encode_items(items, backbone, backend, report=lambda text: None)
    y_rec = data.meta["label"].map(labels.index).to_numpy()
    speakers = (data.meta["corpus"].astype(str) + ":" + data.meta["speaker"].astype(str)
                ).to_numpy()
    folds = speaker_folds(speakers, n_folds, SEED)
    logits = out_of_fold_logits(data, y_rec, len(labels), settings, folds, SEED)
    _, owner, durations = data.segments(settings["layers"])
    served = calibration_rows(data, head.languages)
    fitted = fit_speaker_adaptation(
        softmax(logits.astype(np.float64), head.temperature), owner, durations, y_rec, speakers,
        data.meta["corpus"].astype(str).to_numpy(), served, len(labels),
        f"the training speakers of {', '.join(sorted(set(data.meta['corpus'][served])))} "
        f"(annotate/training/heldout.py), the head out of fold over {len(folds)} speaker "
        "folds, each corpus adapted as one run",
        lambda text: print(f"{name}: {text}", flush=True))
    head = dataclasses.replace(head, speaker_adaptation=fitted)
    write_model_folder(head, head_card(head))


def main() -> None:
    """Refit every emotion head named (default: all four)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--only", default=None, help="comma-separated head names")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    backbone = reference_backbone(read_backbone_folder(args.models / "whisper-base"))
    backend = choose_backbone_backend(backbone, tuple(range(backbone.litert.n_layers + 1)))
    for name in (args.only.split(",") if args.only else HEADS):
        refit(name, args.models, args.corpora, backbone, backend, args.folds)


if __name__ == "__main__":
    main()
