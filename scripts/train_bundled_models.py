"""Retrain every bundled model from scratch, reproducibly (fixed seeds).

Trains on the training speakers of the corpora in ``--corpora`` (the
held-out speakers of :mod:`annotate.heldout` are never used), with
``annotate.train.train`` -- the same code as ``annotate train`` -- and writes
the model folders and their cards into ``--out`` (default ``models/``):

    emotion-de     EmoDB (7 emotions)
    emotion-it     EMOVO (7 emotions)
    emotion-en     RAVDESS (8 emotions, calm included)
    emotion-multi  EmoDB + EMOVO + RAVDESS, for French and every other language
    language       Common Voice en/de/fr/it + the emotion corpora relabelled by
                   language + espeak-ng synthetic speech (when installed)

Usage: python scripts/train_bundled_models.py --corpora ../shared/corpora [--out models]
       [--only language,emotion-de] [--epochs 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from annotate import heldout  # noqa: E402
from annotate.corpora import read_corpus  # noqa: E402
from annotate.train import train  # noqa: E402

SEED = 20261125
LANGUAGE_SAMPLES_PER_EMOTION_CORPUS = 120
SYNTHETIC_PER_LANGUAGE = 100
LICENCES = ("EmoDB: free for research (CC0-1.0 per audb); EMOVO: research use with "
            "acknowledgement; RAVDESS: CC BY-NC-SA 4.0 (non-commercial); Common Voice: CC0-1.0; "
            "espeak-ng speech: synthetic, made here")


def sample(corpus, n: int, seed: int):
    items = corpus.items
    if len(items) > n:
        items = items.sample(n=n, random_state=seed).sort_values("path", ignore_index=True)
    return dataclasses.replace(corpus, items=items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/annotate-synthetic"))
    args = parser.parse_args()
    only = {x for x in args.only.split(",") if x}
    root = args.corpora

    def corpus(name: str, folder: str):
        return heldout.split(read_corpus(name, root / folder), "train")

    emodb, emovo, ravdess = corpus("emodb", "emodb"), corpus("emovo", "emovo"), corpus("ravdess", "ravdess")
    common = dict(epochs=args.epochs, seed=SEED, patience=6, jobs=args.jobs, overwrite=True,
                  progress=lambda text: print(text, flush=True))
    plans = {
        "emotion-de": dict(task="emotion", corpora=[emodb]),
        "emotion-it": dict(task="emotion", corpora=[emovo]),
        "emotion-en": dict(task="emotion", corpora=[ravdess]),
        "emotion-multi": dict(task="emotion", corpora=[emodb, emovo, ravdess], languages=["*"]),
    }
    if not only or "language" in only:
        commonvoice = corpus("commonvoice", "commonvoice")
        language_corpora = [commonvoice] + [
            sample(heldout.as_language_corpus(c), LANGUAGE_SAMPLES_PER_EMOTION_CORPUS, SEED)
            for c in (emodb, emovo, ravdess)
        ]
        from synthetic_speech import make_synthetic_corpus

        sentences = {
            lang: commonvoice.items.loc[commonvoice.items["language"] == lang, "sentence"].tolist()
            for lang in ("en", "de", "fr", "it")
        }
        language_corpora.append(make_synthetic_corpus(sentences, args.cache, SYNTHETIC_PER_LANGUAGE))
        plans["language"] = dict(task="language", corpora=language_corpora)
    for name, plan in plans.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        print(f"== {name}", flush=True)
        spec = train(output_dir=args.out / name, name=name, **plan, **common)
        card = spec.folder / "MODEL_CARD.md"
        card.write_text(card.read_text() + f"\n## Licences of the training data\n\n{LICENCES}\n\n"
                        "Held-out test speakers (never used here) are listed in "
                        "`annotate/heldout.py`; `benchmarks/accuracy.py` measures them.\n")
        print(f"== {name} done in {time.monotonic() - started:.0f} s: "
              f"UAR {spec.metrics.get('uar', float('nan')):.3f}", flush=True)


if __name__ == "__main__":
    main()
