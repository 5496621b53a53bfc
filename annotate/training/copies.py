"""Augmented copies of training recordings, written once, for heads on cached features.

A head trains on backbone features cached per file, so it cannot draw fresh
perturbations every epoch as the log-mel trainer does. Instead each
training recording gets a few perturbed copies (noise, reverberation,
speed, telephone channel, level: :func:`annotate.training.augment.augment_audio`
with its default settings), written as files beside the feature cache and
encoded like any other recording. A copy trains with its original's label
and speaker, and is never a validation recording: folds hold out the
original's speaker together with its copies, and only originals are scored.

Every copy depends only on its original's path, the copy's number and the
seed, so a retraining finds the same files (and their cached features).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from annotate.training.augment import AugmentSettings, augment_audio

#: Column naming, for a copy, the path of the recording it was made from.
COPY_OF = "copy_of"
#: Copies per training recording that ``annotate train`` makes by default,
#: by task. Language: on Common Voice training speakers (out of fold), two
#: copies took telephone-band versions of the validation clips from 0.852 to
#: 0.914 per recording, the clean clips from 0.948 to 0.943. Emotion: none;
#: on RAVDESS training speakers (out of fold, emotion-en's settings) one copy
#: left UAR where it was (0.716 both), at twice the encoding.
DEFAULT_COPIES = {"language": 2, "emotion": 0}


def copy_sources(meta: pd.DataFrame) -> np.ndarray:
    """Per row, the path of the recording it is a copy of, or ``""`` for an original."""
    if COPY_OF not in meta:
        return np.full(len(meta), "", dtype=object)
    return meta[COPY_OF].fillna("").astype(str).to_numpy()


def augmented_copies(items: pd.DataFrame, copies: int, folder: Path, seed: int,
                     settings: AugmentSettings = AugmentSettings(),
                     sampling_rate: int = 16000) -> pd.DataFrame:
    """``copies`` perturbed copies of every item, as items (written to ``folder`` if missing).

    Args:
        items: Training recordings (``path`` and their labels).
        copies: Copies per recording (0: none).
        folder: Where the copies' FLAC files go.
        seed: Seeds every perturbation, with the original's path and the copy's number.

    Returns:
        The copies' items: the originals' columns, ``path`` naming the copy and
        :data:`COPY_OF` the original. Recordings that cannot be read are skipped
        (the encoder reports them for the originals).
    """
    import soundfile as sf

    from annotate.audio.decode import probe, read_span
    from annotate.errors import InputError

    rows = []
    if copies <= 0 or items.empty:
        return items.iloc[:0].assign(**{COPY_OF: pd.Series(dtype=str)})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for _, item in items.iterrows():
        original = str(item["path"])
        digest = hashlib.sha256(f"{Path(original).resolve()}|{seed}".encode()).hexdigest()
        samples = None
        for number in range(copies):
            target = folder / f"{digest[:24]}-{number}.flac"
            if not target.is_file():
                if samples is None:
                    try:
                        info = probe(original)
                        samples = read_span(original, info, 0, info.duration_s, sampling_rate)
                    except (InputError, OSError):
                        break
                rng = np.random.default_rng([int(digest[:15], 16), number, seed])
                copy = np.clip(augment_audio(samples, rng, sampling_rate, settings), -1.0, 1.0)
                partial = target.with_suffix(".partial.flac")
                sf.write(partial, copy, sampling_rate, subtype="PCM_16")
                partial.replace(target)
            rows.append({**item.to_dict(), "path": str(target), COPY_OF: original})
    return pd.DataFrame(rows, columns=[*items.columns, COPY_OF])
