"""Synthetic multi-voice speech in en, de, fr, it with Debian's espeak-ng.

The sentences are Common Voice's own (CC0), taken only from the training
speakers' rows, spoken by many espeak-ng voice variants at several rates and
pitches. It helps the language model hear each language from many "speakers"
and through a voice that belongs to no corpus; it is no substitute for real
speakers in evaluation.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from annotate.training.corpora import Corpus

VOICES = {"en": ["en-us", "en-gb", "en-gb-scotland"], "de": ["de"], "fr": ["fr", "fr-be"],
          "it": ["it"]}
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
            "klatt2", "whisper", "croak"]


def make_synthetic_corpus(sentences: dict[str, list[str]], folder: Path, per_language: int,
                          seed: int = 0) -> Corpus:
    """Speak ``per_language`` sentences per language into ``folder`` (cached) and list them."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    rng = np.random.default_rng(seed)
    rows = []
    for language, texts in sorted(sentences.items()):
        for i in range(per_language):
            text = texts[i % len(texts)]
            voice = f"{rng.choice(VOICES[language])}+{rng.choice(VARIANTS)}"
            rate, pitch = int(rng.integers(120, 200)), int(rng.integers(20, 80))
            path = folder / language / f"{language}_{i:04d}.wav"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch),
                                "-w", str(path), text], check=True, capture_output=True)
            rows.append({"path": str(path), "label": language, "task": "language",
                         "speaker": f"espeak:{voice}:{rate}:{pitch}", "gender": None,
                         "language": language, "split": None, "corpus": "espeak"})
    items = pd.DataFrame(rows).sort_values("path", ignore_index=True)
    return Corpus(name="espeak", root=folder, items=items)
