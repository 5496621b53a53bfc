"""Rebuild every bundled model, reproducibly: the Whisper backbone, then the heads on it.

Trains on the training speakers of the corpora in ``--corpora`` (the held-out
speakers of :mod:`annotate.training.heldout` are never used, not even for the
search), with :func:`annotate.training.heads.train_head` -- the code behind
``annotate train --backbone`` -- and writes into ``--out`` (default ``models/``):

    whisper-base   OpenAI Whisper base's encoder (scripts/build_backbone.py)
    language       Common Voice en/de/fr/it + the emotion corpora labelled by language
                   + speechocean762 (English of Mandarin-L1 adults and children)
                   + espeak-ng speech of Common Voice training sentences, each
                   recording with 2 augmented copies (annotate.training.copies) (when
                   installed: a voice no corpus has, so that synthetic or unusual
                   voices are not taken for the corpora's languages)
    emotion-de     EmoDB (7 emotions)
    emotion-en     RAVDESS (8 emotions, calm included)
    emotion-it     EMOVO's 7 emotions, on the recordings of all three corpora with
                   those labels (EMOVO's three training actors alone generalise less:
                   validation UAR 0.38 against 0.50 with the other corpora)
    emotion-multi  EmoDB + EMOVO + RAVDESS: the cross-lingual model for French and
                   every other language without a model of its own, each corpus
                   centred on its own mean and chosen leaving one corpus out
                   (annotate.training.transfer)

Each recording is encoded once by the backbone's float reference (the same
blocks with float16 weights, :mod:`annotate.training.reference`; a run reads
the int8 export) and cached (``$ANNOTATE_CACHE``, default
``~/.cache/annotate/backbone``).

Usage: python scripts/train_bundled_models.py --corpora ../shared/corpora [--out models]
       [--only language,emotion-de] [--search 24]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annotate.labels import EMOTIONS  # noqa: E402
from annotate.modelling.backbone_folder import read_backbone_folder  # noqa: E402
from annotate.modelling.inference import choose_backbone_backend  # noqa: E402
from annotate.training import heldout  # noqa: E402
from annotate.training.copies import DEFAULT_COPIES, augmented_copies, copy_sources  # noqa: E402
from annotate.training.corpora import read_corpus  # noqa: E402
from annotate.training.encoding import default_cache_dir, encode_items  # noqa: E402
from annotate.training.heads import train_head  # noqa: E402
from annotate.training.reference import reference_backbone  # noqa: E402

SEED = 20261201
SYNTHETIC_PER_LANGUAGE = 100
LICENCES = ("EmoDB: free for research (CC0-1.0 per audb); EMOVO: research use with "
            "acknowledgement; RAVDESS: CC BY-NC-SA 4.0 (non-commercial); Common Voice: CC0-1.0; "
            "speechocean762: free for commercial and non-commercial use (its README); "
            "espeak-ng speech: synthetic, made here")


def training_items(corpora: Path, names: list[str]) -> pd.DataFrame:
    """The training speakers' recordings of the named corpora."""
    parts = []
    for name in names:
        corpus = heldout.split(read_corpus(name, corpora / name), "train")
        items = corpus.items.copy()
        items["corpus"] = name
        parts.append(items)
    return pd.concat(parts, ignore_index=True)


def training_recordings(corpora: Path, synthetic: Path, language: bool = True
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every bundled model's training recordings, and the language head's augmented copies.

    The originals: the training speakers of EmoDB, EMOVO, RAVDESS, Common
    Voice and speechocean762, and espeak-ng speech of Common Voice training sentences (written
    to ``synthetic``) when espeak-ng is installed. Each column ``corpus``
    names where a recording comes from. Without ``language``, only what the
    emotion heads train on: the emotion corpora, no copies.
    """
    emotion = training_items(corpora, ["emodb", "emovo", "ravdess"])
    if not language:
        return emotion, emotion.iloc[:0]
    speech = training_items(corpora, ["commonvoice"])
    accented = training_items(corpora, ["speechocean762"])
    parts = [emotion, speech, accented]
    if shutil.which("espeak-ng"):
        sys.path.insert(0, str(ROOT / "scripts"))
        from synthetic_speech import make_synthetic_corpus

        sentences = {lang: speech.loc[speech["language"] == lang, "sentence"].dropna().tolist()
                     for lang in ("de", "en", "fr", "it")}
        voices = make_synthetic_corpus(sentences, synthetic, SYNTHETIC_PER_LANGUAGE,
                                       seed=SEED).items.copy()
        voices["corpus"] = "espeak"
        parts.append(voices)
    else:
        print("espeak-ng is not installed: the language head trains without synthetic speech")
    originals = pd.concat(parts, ignore_index=True)
    # Augmented copies train the language head only (DEFAULT_COPIES; see annotate.training.copies).
    copies = augmented_copies(originals, DEFAULT_COPIES["language"],
                              default_cache_dir() / "augmented", SEED)
    return originals, copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--search", type=int, default=24, help="search trials per head")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--synthetic", type=Path, default=Path("/tmp/annotate-synthetic"),
                        help="where espeak-ng's speech is written (cached)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    out = args.out

    backbone_dir = out / "whisper-base"
    if not (backbone_dir / "backbone.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_backbone.py"),
                        "--out", str(backbone_dir)], check=True)
    # The heads learn from the backbone's float states (annotate.training.reference).
    backbone = reference_backbone(read_backbone_folder(backbone_dir))
    backend = choose_backbone_backend(backbone, tuple(range(backbone.litert.n_layers + 1)))

    originals, copies = training_recordings(args.corpora, args.synthetic,
                                            language=only is None or "language" in only)
    encoded = encode_items(pd.concat([originals, copies], ignore_index=True), backbone, backend,
                           jobs=args.jobs)
    is_copy = copy_sources(encoded.meta) != ""

    def subset(corpora: list[str], relabel_language: bool = False, labels=None):
        keep = encoded.meta["corpus"].isin(corpora).to_numpy().copy()
        if not relabel_language:
            keep &= ~is_copy
        if labels is not None:
            keep &= encoded.meta["label" if not relabel_language else "language"].isin(
                labels).to_numpy()
        meta = encoded.meta[keep].reset_index(drop=True)
        if relabel_language:
            meta["label"] = meta["language"]
        return type(encoded)(meta, [s for s, k in zip(encoded.states, keep) if k],
                             [d for d, k in zip(encoded.durations, keep) if k])

    def labels_of(corpus: str) -> tuple[str, ...]:
        present = set(encoded.meta.loc[encoded.meta["corpus"] == corpus, "label"])
        return tuple(e for e in EMOTIONS if e in present)

    emodb, emovo, ravdess = labels_of("emodb"), labels_of("emovo"), labels_of("ravdess")
    every = tuple(e for e in EMOTIONS if e in set(emodb) | set(emovo) | set(ravdess))
    plans = {
        "language": ("language",
                     subset(["commonvoice", "speechocean762", "emodb", "emovo", "ravdess",
                             "espeak"], True),
                     ("de", "en", "fr", "it"), ("de", "en", "fr", "it"),
                     "Common Voice en/de/fr/it + speechocean762 (English of Mandarin-L1 adults "
                     "and children) + EmoDB (de), EMOVO (it), RAVDESS (en) + "
                     "espeak-ng speech of Common Voice training sentences; 2 augmented copies of each "
                     "recording (noise, reverberation, speed, telephone channel)"),
        "emotion-de": ("emotion", subset(["emodb"]), emodb, ("de",), "EmoDB"),
        "emotion-en": ("emotion", subset(["ravdess"]), ravdess, ("en",), "RAVDESS"),
        "emotion-it": ("emotion", subset(["emovo", "emodb", "ravdess"], labels=emovo), emovo,
                       ("it",), "EMOVO + the EmoDB and RAVDESS recordings with EMOVO's labels"),
        "emotion-multi": ("emotion", subset(["emodb", "emovo", "ravdess"]), every, ("*",),
                          "EmoDB + EMOVO + RAVDESS (cross-lingual; each corpus centred on its "
                          "own mean, chosen leaving one corpus out)"),
    }
    for name, (task, data, labels, languages, description) in plans.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        print(f"== {name}: {description}", flush=True)
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        counts = data.meta[copy_sources(data.meta) == ""].groupby("corpus").size().to_dict()
        spec = train_head(
            task, data, labels, languages, backbone, backend, folder, name,
            trials=args.search, n_folds=args.folds, seed=SEED,
            training_info={"corpora": description, "recordings_per_corpus": counts,
                           "licences": LICENCES,
                           "test_speakers": "annotate/training/heldout.py (never used)"},
            smooth_language=task == "language")
        print(f"   {spec.folder}: {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
