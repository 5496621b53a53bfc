"""From corpora to model inputs: pick the recordings, split speakers, decode, cut, featurize.

Two kinds of inputs come out of here:

- :class:`Crops` for fitting: overlapping speech crops of the training
  recordings, their audio (so that augmentation acts on the waveform) and
  their clean features;
- :class:`Recordings` for measuring: whole recordings cut and featurized by
  exactly the functions ``annotate run`` uses (``plan_chunks`` and
  ``featurize_chunk``), so that validation and evaluation see what a user's
  run sees.

Decoding and features run in joblib workers that import numpy, soundfile,
soxr and librosa only, never TensorFlow. Nothing is cached on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from annotate.audio.decode import probe, read_span
from annotate.audio.discover import Failure, Recording
from annotate.errors import InputError, UsageError, expected_one_of
from annotate.features import FeatureParams, segment_features
from annotate.labels import TASKS
from annotate.prepare.featurize import SegmentSettings
from annotate.prepare.featurize import featurize_recording as featurize_whole
from annotate.prepare.segment import is_speech, segment_bounds
from annotate.training.augment import AugmentSettings, augment_audio, spec_augment
from annotate.training.corpora.base import Corpus

#: Per-recording columns carried from the corpus items to every example.
ITEM_COLUMNS: tuple[str, ...] = ("path", "label", "speaker", "corpus", "language", "split")
#: Crops per augmentation task; fixed so that the result does not depend on ``jobs``.
AUGMENT_BLOCK = 64

Report = Callable[[str], None]


# --- which recordings -------------------------------------------------------------------


def collect_items(
    corpora: list[Corpus],
    task: str,
    max_files_per_corpus: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The labelled recordings of ``corpora`` for ``task``, one row each.

    Args:
        corpora: Read by :func:`annotate.training.corpora.read_corpus`.
        task: One of ``language``, ``emotion``, ``attitude``.
        max_files_per_corpus: Keep a seeded random sample of at most this
            many recordings of each corpus (for quick runs).
        seed: Seeds the sample.

    Returns:
        Columns :data:`ITEM_COLUMNS`, sorted by path.

    Raises:
        UsageError: Bad task, no corpus, a corpus labelled for another task,
            or the same recording twice.
    """
    if task not in TASKS:
        raise UsageError(expected_one_of("task", task, TASKS))
    if not corpora:
        raise UsageError("no corpus given: pass at least one --corpus NAME=PATH")
    if max_files_per_corpus is not None and max_files_per_corpus < 1:
        raise UsageError(f"max files per corpus must be at least 1, got {max_files_per_corpus}")
    parts = []
    for corpus in corpora:
        items = corpus.items
        items = items[(items["task"] == task) & items["label"].notna()]
        if items.empty:
            found = sorted(set(corpus.items["task"].dropna()))
            raise UsageError(
                f"corpus {corpus.name} at {corpus.root} has no {task} labels "
                f"(it is labelled for {', '.join(found) or 'nothing'}); "
                f"expected a corpus labelled for {task}"
            )
        if max_files_per_corpus is not None and len(items) > max_files_per_corpus:
            items = items.sample(n=max_files_per_corpus, random_state=seed)
        frame = items.reindex(columns=list(ITEM_COLUMNS)).copy()
        frame["corpus"] = corpus.name
        parts.append(frame)
    items = pd.concat(parts, ignore_index=True).sort_values("path", ignore_index=True)
    repeated = items["path"][items["path"].duplicated()]
    if len(repeated):
        raise UsageError(f"recording {repeated.iloc[0]} is given twice: pass each corpus once")
    return items


# --- speaker-independent split ----------------------------------------------------------


@dataclass(frozen=True)
class SpeakerSplit:
    """Training and validation recordings, no speaker on both sides.

    Attributes:
        train: Items (see :func:`collect_items`) to fit on.
        validation: Items to stop early on, calibrate and measure.
        methods: How each corpus was split, by corpus name.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    methods: dict[str, str]

    def describe(self) -> dict:
        """JSON-serialisable description for ``model.json``."""
        return {
            "methods": dict(self.methods),
            "train_speakers": sorted(self.train["speaker"].unique().tolist()),
            "validation_speakers": sorted(self.validation["speaker"].unique().tolist()),
            "train_files": int(len(self.train)),
            "validation_files": int(len(self.validation)),
        }


def check_speaker_independent(train_speakers, validation_speakers) -> None:
    """Raise unless no speaker is on both sides of a split.

    Raises:
        InputError: Naming the speakers found on both sides.
    """
    shared = sorted(set(train_speakers) & set(validation_speakers))
    if shared:
        listed = ", ".join(str(s) for s in shared[:10])
        more = f" and {len(shared) - 10} more" if len(shared) > 10 else ""
        raise InputError(
            f"the split is not speaker-independent: {len(shared)} speaker(s) in both "
            f"training and validation: {listed}{more}",
            kind="split",
        )


def split_by_speaker(
    items: pd.DataFrame, validation_fraction: float = 0.2, seed: int = 0
) -> SpeakerSplit:
    """Split recordings into training and validation by speaker.

    A corpus with an official ``dev`` split (Common Voice releases with
    ``dev.tsv``) is split by it: the speakers of ``dev`` clips validate, and
    the speakers of ``test`` clips are left out altogether (their clips are
    the official test set). Every other corpus is split per language: a
    seeded random ``validation_fraction`` of its speakers (at least one, and
    never all) validates.

    Raises:
        InputError: No speaker could be set aside for validation, or (a bug)
            a speaker ended up on both sides.
        UsageError: ``validation_fraction`` outside (0, 1).
    """
    if not 0.0 < validation_fraction < 1.0:
        raise UsageError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    side: dict[str, str] = {}  # speaker -> "train" / "validation" / "excluded"
    methods: dict[str, str] = {}
    for name, corpus_items in items.groupby("corpus", sort=True):
        splits = set(corpus_items["split"].dropna())
        if "dev" in splits:
            methods[str(name)] = "official split: dev validates, test speakers left out"
            test = set(corpus_items.loc[corpus_items["split"] == "test", "speaker"])
            dev = set(corpus_items.loc[corpus_items["split"] == "dev", "speaker"]) - test
            for speaker in sorted(set(corpus_items["speaker"])):
                chosen = "excluded" if speaker in test else "validation" if speaker in dev else "train"
                side.setdefault(speaker, chosen)
            continue
        methods[str(name)] = (
            f"seeded speaker split per language (fraction {validation_fraction}, seed {seed})"
        )
        for _, group in corpus_items.groupby(corpus_items["language"].fillna(""), sort=True):
            speakers = sorted(s for s in set(group["speaker"]) if s not in side)
            if len(speakers) < 2:
                for speaker in speakers:
                    side[speaker] = "train"
                continue
            n_validation = min(max(int(round(validation_fraction * len(speakers))), 1),
                               len(speakers) - 1)
            picked = set(rng.permutation(speakers)[:n_validation].tolist())
            for speaker in speakers:
                side[speaker] = "validation" if speaker in picked else "train"
    sides = items["speaker"].map(side)
    split = SpeakerSplit(
        train=items[sides == "train"].reset_index(drop=True),
        validation=items[sides == "validation"].reset_index(drop=True),
        methods=methods,
    )
    check_speaker_independent(split.train["speaker"], split.validation["speaker"])
    if split.validation.empty or split.train.empty:
        raise InputError(
            f"cannot split {items['speaker'].nunique()} speaker(s) into training and "
            "validation: a speaker-independent split needs at least two speakers",
            kind="split",
        )
    return split


# --- training crops ---------------------------------------------------------------------


@dataclass
class Crops:
    """Speech crops of recordings, for fitting.

    Attributes:
        meta: One row per crop: the item columns plus ``start_s`` and ``end_s``.
        features: np.ndarray [shape=(n, frames, n_mels), float32], clean
            features from :func:`annotate.features.segment_features`.
        audio: np.ndarray [shape=(n, max_samples), float32] zero-padded
            waveforms at the feature sampling rate, or None when not kept.
        lengths: np.ndarray [shape=(n,), int64] samples of each crop.
    """

    meta: pd.DataFrame
    features: np.ndarray
    audio: np.ndarray | None
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.meta)

    def select(self, mask: np.ndarray) -> Crops:
        """The crops where ``mask`` (bool, one per crop) is true."""
        mask = np.asarray(mask, dtype=bool)
        return Crops(
            self.meta[mask].reset_index(drop=True),
            self.features[mask],
            None if self.audio is None else self.audio[mask],
            self.lengths[mask],
        )

    def waveform(self, i: int) -> np.ndarray:
        """Crop ``i``'s samples, np.ndarray [shape=(lengths[i],), float32]."""
        if self.audio is None:
            raise UsageError("these crops were loaded without their audio (keep_audio=False)")
        return self.audio[i, : self.lengths[i]]


def crop_recording(
    path: str, params: FeatureParams, hop_s: float, keep_audio: bool
) -> dict | Failure:
    """Decode one recording, cut it into segments and keep the speech crops.

    Runs in a joblib worker.

    Returns:
        ``{"bounds": [shape=(k, 2)], "audio": [k arrays] or None,
        "features": [shape=(k, frames, n_mels)]}`` for the ``k`` speech
        segments, or the failure.
    """
    try:
        info = probe(path)
        if info.frames <= 0:
            return Failure(path, "empty", "the file holds no audio samples")
        rate = params.sampling_rate
        samples = read_span(path, info, 0.0, info.duration_s, rate)
        bounds = segment_bounds(info.duration_s, params.segment_s, hop_s)
        kept_bounds, kept_audio, kept_features = [], [], []
        for start_s, end_s in bounds:
            crop = samples[int(round(start_s * rate)) : int(round(end_s * rate))]
            if not is_speech(crop, rate):
                continue
            kept_bounds.append((start_s, end_s))
            kept_audio.append(crop.copy())
            kept_features.append(segment_features(crop, params))
    except InputError as error:
        return Failure(path, error.kind, str(error))
    except Exception as error:  # noqa: BLE001 - one bad file must not stop training
        return Failure(path, "error", f"{type(error).__name__}: {error}")
    return {
        "bounds": np.asarray(kept_bounds, dtype=np.float64).reshape(-1, 2),
        "audio": kept_audio if keep_audio else None,
        "features": (
            np.stack(kept_features)
            if kept_features
            else np.zeros((0, params.n_frames, params.n_mels), np.float32)
        ),
    }


def load_crops(
    items: pd.DataFrame,
    params: FeatureParams,
    hop_s: float | None = None,
    keep_audio: bool = True,
    jobs: int | None = None,
) -> tuple[Crops, list[Failure]]:
    """Speech crops of every recording in ``items``.

    Args:
        items: From :func:`collect_items`.
        params: Feature settings; crops are ``params.segment_s`` long.
        hop_s: Crop hop in seconds (default: half a segment, for more crops).
        keep_audio: Keep the waveforms (needed for audio augmentation).
        jobs: Worker processes (default: all cores).

    Returns:
        The crops, and one failure per recording that could not be decoded.
    """
    from joblib import Parallel, delayed

    hop_s = params.segment_s / 2 if hop_s is None else hop_s
    if hop_s <= 0:
        raise UsageError(f"crop hop must be positive, got {hop_s}")
    results = Parallel(n_jobs=_jobs(jobs))(
        delayed(crop_recording)(path, params, hop_s, keep_audio) for path in items["path"]
    )
    failures, metas, features, waveforms = [], [], [], []
    for (_, item), result in zip(items.iterrows(), results):
        if isinstance(result, Failure):
            failures.append(result)
            continue
        for start_s, end_s in result["bounds"]:
            metas.append({**{c: item[c] for c in ITEM_COLUMNS}, "start_s": start_s, "end_s": end_s})
        features.append(result["features"])
        if keep_audio:
            waveforms.extend(result["audio"])
    meta = pd.DataFrame(metas, columns=[*ITEM_COLUMNS, "start_s", "end_s"])
    stacked = (
        np.concatenate(features)
        if features
        else np.zeros((0, params.n_frames, params.n_mels), np.float32)
    )
    lengths = np.array([w.size for w in waveforms] if keep_audio else [0] * len(meta), np.int64)
    audio = None
    if keep_audio:
        audio = np.zeros((len(waveforms), int(lengths.max(initial=0))), np.float32)
        for i, waveform in enumerate(waveforms):
            audio[i, : waveform.size] = waveform
    return Crops(meta, stacked, audio, lengths), failures


def _augment_block(
    waveforms: list[np.ndarray],
    params: FeatureParams,
    settings: AugmentSettings,
    seed: tuple[int, ...],
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((len(waveforms), params.n_frames, params.n_mels), np.float32)
    for i, waveform in enumerate(waveforms):
        perturbed = augment_audio(waveform, rng, params.sampling_rate, settings)
        out[i] = spec_augment(segment_features(perturbed, params), rng, settings)
    return out


def augmented_features(
    crops: Crops,
    params: FeatureParams,
    settings: AugmentSettings,
    seed: int,
    epoch: int,
    jobs: int | None = 1,
) -> np.ndarray:
    """Fresh augmented features of every crop for one epoch.

    Crops are augmented in blocks of :data:`AUGMENT_BLOCK`, each with its
    own generator seeded by ``(seed, epoch, block)``: the result depends on
    the seed and the epoch, not on ``jobs``.

    Returns:
        np.ndarray [shape=(len(crops), frames, n_mels), float32].
    """
    from joblib import Parallel, delayed

    if len(crops) == 0:
        return np.zeros((0, params.n_frames, params.n_mels), np.float32)
    starts = range(0, len(crops), AUGMENT_BLOCK)
    parts = Parallel(n_jobs=min(_jobs(jobs), len(starts)))(
        delayed(_augment_block)(
            [crops.waveform(i) for i in range(start, min(start + AUGMENT_BLOCK, len(crops)))],
            params, settings, (seed, epoch, number),
        )
        for number, start in enumerate(starts)
    )
    return np.concatenate(parts)


# --- whole recordings, as `annotate run` sees them --------------------------------------


@dataclass
class Recordings:
    """Whole recordings cut and featurized as ``annotate run`` does.

    Attributes:
        meta: One row per recording: the item columns plus ``duration_s``,
            ``segments`` and ``speech_segments``.
        bounds: Per recording, np.ndarray [shape=(n, 2), float64] segment
            start/end in seconds.
        speech: Per recording, np.ndarray [shape=(n,), bool].
        features: Per recording, np.ndarray [shape=(n_speech, frames,
            n_mels), float32], speech segments only.
    """

    meta: pd.DataFrame
    bounds: list[np.ndarray]
    speech: list[np.ndarray]
    features: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.meta)

    def select(self, mask: np.ndarray) -> Recordings:
        """The recordings where ``mask`` (bool, one per recording) is true."""
        keep = np.flatnonzero(np.asarray(mask, dtype=bool))
        return Recordings(
            self.meta.iloc[keep].reset_index(drop=True),
            [self.bounds[i] for i in keep],
            [self.speech[i] for i in keep],
            [self.features[i] for i in keep],
        )

    def speech_durations(self, i: int) -> np.ndarray:
        """Durations in seconds of recording ``i``'s speech segments, shape (n_speech,)."""
        bounds = self.bounds[i][self.speech[i]]
        return bounds[:, 1] - bounds[:, 0]

    def segment_durations(self) -> np.ndarray:
        """Every speech segment's duration in seconds, in :meth:`stacked`'s order."""
        return np.concatenate([self.speech_durations(i) for i in range(len(self))]
                              or [np.zeros(0)])

    def stacked(self, params: FeatureParams) -> tuple[np.ndarray, np.ndarray]:
        """Every speech segment's features and the index of its recording.

        Returns:
            np.ndarray [shape=(n_segments, frames, n_mels), float32] and
            np.ndarray [shape=(n_segments,), int64].
        """
        owner = np.concatenate(
            [np.full(len(f), i, np.int64) for i, f in enumerate(self.features)]
        ) if self.features else np.zeros(0, np.int64)
        features = [f for f in self.features if len(f)]
        if not features:
            return np.zeros((0, params.n_frames, params.n_mels), np.float32), owner
        return np.concatenate(features), owner


def featurize_recording(
    path: str, settings: SegmentSettings, params: FeatureParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | Failure:
    """One recording through ``annotate run``'s worker path (runs in a joblib worker).

    Returns:
        ``(bounds, speech, features)`` as in :class:`Recordings`, or the failure.
    """
    done = featurize_whole(Recording(path, path), settings, (params,))
    if isinstance(done, Failure):
        return done
    return done.bounds, done.speech, np.concatenate(done.features[params])


def load_recordings(
    items: pd.DataFrame, params: FeatureParams, jobs: int | None = None
) -> tuple[Recordings, list[Failure]]:
    """Featurize whole recordings with the segmentation ``annotate run`` uses for a model.

    Segments are ``params.segment_s`` long with the same hop (``annotate
    run``'s default ``--window``/``--hop`` for a model of that length).

    Returns:
        The recordings, and one failure per recording that could not be read.
    """
    from joblib import Parallel, delayed

    settings = SegmentSettings(
        window_s=params.segment_s, hop_s=params.segment_s, sampling_rate=params.sampling_rate
    )
    results = Parallel(n_jobs=_jobs(jobs))(
        delayed(featurize_recording)(path, settings, params) for path in items["path"]
    )
    failures, rows, bounds, speech, features = [], [], [], [], []
    for (_, item), result in zip(items.iterrows(), results):
        if isinstance(result, Failure):
            failures.append(result)
            continue
        rec_bounds, rec_speech, rec_features = result
        rows.append({
            **{c: item[c] for c in ITEM_COLUMNS},
            "duration_s": float(rec_bounds[-1, 1]) if len(rec_bounds) else 0.0,
            "segments": int(len(rec_bounds)),
            "speech_segments": int(rec_speech.sum()),
        })
        bounds.append(rec_bounds)
        speech.append(rec_speech)
        features.append(rec_features)
    meta = pd.DataFrame(
        rows, columns=[*ITEM_COLUMNS, "duration_s", "segments", "speech_segments"]
    )
    return Recordings(meta, bounds, speech, features), failures


def _jobs(jobs: int | None) -> int:
    if jobs is not None and jobs < 1:
        raise UsageError(f"jobs must be at least 1, got {jobs}")
    return jobs or os.cpu_count() or 1
