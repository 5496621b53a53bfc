"""Fit each emotion head's temperature for ``annotate run --speakers``, on validation speakers.

Run by ``make models`` after ``scripts/train_bundled_models.py``. With
``--speakers``, a run centres each speaker's emotion log-probabilities on the
speaker's mean (:mod:`annotate.modelling.speaker_adaptation`); the centred
probabilities are sharper in truth than they look, so each head gets a
temperature of its own, chosen on the training speakers only
(``annotate.training.heldout``):

- the head's segment probabilities out of fold: its recorded settings
  retrained without each of 4 speaker folds, on the same recordings as the
  bundled head (``train_bundled_models.py``), scoring that fold, with the
  head's calibration temperature;
- each of the corpora the head serves adapted as one run (its speakers
  against each other, as a user's run of that corpus would be);
- the temperature with the least negative log-likelihood of the segments'
  labels, on a grid.

The temperature and the validation table (UAR and ECE per recording, as the
heads give them and adapted) go into the head's ``model.json``
(``speaker_adaptation``) and its card; the weights stay as they are.

Usage: python scripts/fit_speaker_adaptation.py --corpora ../shared/corpora [--models models]
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
from annotate.modelling.inference import choose_backbone_backend, softmax  # noqa: E402
from annotate.modelling.model_folder import (  # noqa: E402
    SpeakerAdaptation,
    read_model_folder,
    write_model_folder,
)
from annotate.modelling.speaker_adaptation import adapt_to_speakers  # noqa: E402
from annotate.training.heads import (  # noqa: E402
    encode_items,
    head_card,
    out_of_fold_logits,
    speaker_folds,
    uar,
)
from annotate.training.metrics import expected_calibration_error  # noqa: E402

#: Per head: the corpora it trains on (as train_bundled_models.py) and those it serves.
HEADS = {
    "emotion-de": (["emodb"], ["emodb"]),
    "emotion-en": (["ravdess"], ["ravdess"]),
    "emotion-it": (["emovo", "emodb", "ravdess"], ["emovo"]),
    "emotion-multi": (["emodb", "emovo", "ravdess"], ["emodb", "emovo", "ravdess"]),
}
#: Temperatures tried.
TEMPERATURES = tuple(round(0.5 + 0.05 * i, 2) for i in range(31))


def per_recording(probs: np.ndarray, owner: np.ndarray, durations: np.ndarray,
                  n: int) -> np.ndarray:
    """Each recording's duration-weighted mean of its segments' probabilities."""
    sums = np.zeros((n, probs.shape[1]))
    np.add.at(sums, owner, probs * durations[:, None])
    return sums / np.maximum(sums.sum(axis=1, keepdims=True), 1e-12)


def fit_head(name: str, models: Path, corpora: Path, backbone, backend, folds_n: int) -> None:
    """Fit head ``name``'s temperature and write it into its folder."""
    trained_on, served = HEADS[name]
    head = read_model_folder(models / name)
    labels = list(head.labels)
    settings = dict(head.training["settings"], layers=tuple(head.training["settings"]["layers"]))
    items = training_items(corpora, trained_on)
    items = items[items["label"].isin(labels)].reset_index(drop=True)
    data = encode_items(items, backbone, backend, report=lambda text: None)
    y_rec = data.meta["label"].map(labels.index).to_numpy()
    speakers = (data.meta["corpus"].astype(str) + ":" + data.meta["speaker"].astype(str)
                ).to_numpy()
    folds = speaker_folds(speakers, folds_n, SEED)
    logits = out_of_fold_logits(data, y_rec, len(labels), settings, folds, SEED)
    _, owner, durations = data.segments(settings["layers"])
    probs = softmax(logits.astype(np.float64), head.temperature)
    corpus = data.meta["corpus"].astype(str).to_numpy()

    def adapted(temperature: float) -> tuple[np.ndarray, np.ndarray]:
        out, mask = probs.copy(), np.zeros(len(probs), bool)
        for c in served:  # each corpus adapted as a run of its own
            rows = corpus[owner] == c
            out[rows], mask[rows] = adapt_to_speakers(probs[rows], speakers[owner][rows],
                                                      durations[rows], temperature)
        return out, mask

    truth = y_rec[owner]
    nll = {}
    for temperature in TEMPERATURES:
        out, mask = adapted(temperature)
        nll[temperature] = -np.mean(np.log(np.maximum(out[mask, truth[mask]], 1e-12)))
    best = min(nll, key=nll.get)
    out, _ = adapted(best)
    table = {}
    for c in served:
        recs = np.flatnonzero(corpus == c)
        plain = per_recording(probs, owner, durations, len(data.meta))[recs]
        adapt = per_recording(out, owner, durations, len(data.meta))[recs]
        table[c] = {"recordings": int(len(recs)),
                    "speakers": int(len(set(speakers[recs]))),
                    "uar_plain": uar(y_rec[recs], plain.argmax(axis=1), len(labels)),
                    "uar_adapted": uar(y_rec[recs], adapt.argmax(axis=1), len(labels)),
                    "ece_plain": float(expected_calibration_error(plain, y_rec[recs])),
                    "ece_adapted": float(expected_calibration_error(adapt, y_rec[recs]))}
        r = table[c]
        print(f"{name} on {c} ({r['speakers']} speakers, {r['recordings']} recordings): UAR "
              f"{r['uar_plain']:.3f} -> {r['uar_adapted']:.3f}, ECE {r['ece_plain']:.3f} -> "
              f"{r['ece_adapted']:.3f} at temperature {best}", flush=True)
    fitted = SpeakerAdaptation(
        best, fitted_on=(f"the training speakers of {', '.join(served)} "
                         "(annotate/training/heldout.py), the head out of fold over "
                         f"{len(folds)} speaker folds, each corpus adapted as one run"),
        validation={"corpora": table, "temperatures": {str(t): float(v)
                                                       for t, v in nll.items()}})
    head = dataclasses.replace(head, speaker_adaptation=fitted)
    write_model_folder(head, head_card(head))


def main() -> None:
    """Fit every emotion head named (default: all four)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--only", default=None, help="comma-separated head names")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    backbone = read_backbone_folder(args.models / "whisper-base")
    backend = choose_backbone_backend(backbone, tuple(range(backbone.litert.n_layers + 1)))
    for name in (args.only.split(",") if args.only else HEADS):
        fit_head(name, args.models, args.corpora, backbone, backend, args.folds)


if __name__ == "__main__":
    main()
