"""Recordings as a backbone sees them: pooled hidden states, encoded once and cached.

The recordings go through ``annotate run``'s own path (segments, speech
detection, Whisper log-mel) and the backbone's run-time encoder, once: each
recording's pooled hidden states are cached on disk, keyed by its file and
the backbone, so that a search, a retraining or another head never encodes
it again. The recordings that could not be read come back as data
(:attr:`EncodedRecordings.failures`), beside the progress lines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from annotate.audio.discover import Failure
from annotate.errors import UsageError
from annotate.modelling.backbone_folder import BackboneSpec
from annotate.training.copies import copy_sources

Report = Callable[[str], None]


@dataclass
class EncodedRecordings:
    """Recordings as the backbone sees them at run time.

    Attributes:
        meta: One row per recording (the corpus items, plus ``duration_s``).
        states: Per recording, np.ndarray [shape=(n_speech, n_states, width)]:
            pooled hidden states 0..n_states-1 of each speech segment.
        durations: Per recording, each speech segment's duration in seconds.
        failures: The recordings :func:`encode_items` could not read (so not
            among these); a subset has none.
    """

    meta: pd.DataFrame
    states: list[np.ndarray]
    durations: list[np.ndarray]
    failures: list[Failure] = field(default_factory=list)

    def subset(self, keep: np.ndarray) -> EncodedRecordings:
        """The recordings where ``keep`` is true."""
        return EncodedRecordings(self.meta[keep].reset_index(drop=True),
                                 [s for s, k in zip(self.states, keep) if k],
                                 [d for d, k in zip(self.durations, keep) if k])

    def split_copies(self) -> tuple[EncodedRecordings, EncodedRecordings, np.ndarray]:
        """Originals, augmented copies (:mod:`annotate.training.copies`), and each copy's original.

        Copies whose original is not among the recordings are dropped.
        """
        copy_of = copy_sources(self.meta)
        originals = self.subset(copy_of == "")
        index = {path: i for i, path in enumerate(originals.meta["path"])}
        keep = np.array([c != "" and c in index for c in copy_of], dtype=bool)
        copies = self.subset(keep)
        return originals, copies, np.array([index[c] for c in copy_of[keep]], dtype=np.int64)

    def segments(self, layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every speech segment's head input, its recording and its duration."""
        rows = [s[:, list(layers)].reshape(len(s), -1) for s in self.states]
        width = self.states[0].shape[-1] * len(layers) if self.states else 0
        features = np.concatenate(rows) if rows else np.zeros((0, width), np.float32)
        owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(self.states)])
        return features, owner.astype(np.int64), np.concatenate(self.durations)


def encode_items(items: pd.DataFrame, backbone: BackboneSpec, backend: str,
                 window_s: float = 3.0, cache_dir: Path | None = None, jobs: int | None = None,
                 report: Report = print) -> EncodedRecordings:
    """Each item's pooled hidden states, from the cache or encoded now.

    Segments are cut as ``annotate run --window window_s`` cuts them;
    recordings without speech are dropped (a run writes no labels for them).
    A recording that cannot be read is reported (``skipped PATH: MESSAGE``),
    left out and listed in the result's ``failures``; it is read again by
    the next call, having no cache entry.

    Raises:
        UsageError: No recording holds speech.
    """
    from annotate.backbone.runtime import Backbone
    from annotate.modelling.model_folder import folder_hash
    from annotate.training.training_data import load_recordings

    params = dataclasses.replace(backbone.features, segment_s=window_s)
    n_states = (backbone.litert.n_layers if backend == "litert" and backbone.litert
                else backbone.n_layers)
    layers = tuple(range(n_states + 1))
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    identity = f"{folder_hash(backbone.folder)}|{backend}|{window_s}|{layers}"
    keys = [_cache_key(path, identity) for path in items["path"]]
    todo = [i for i, key in enumerate(keys) if not (cache / f"{key}.npz").is_file()]
    failures: list[Failure] = []
    if todo:
        report(f"encoding {len(todo)} of {len(items)} recordings with {backbone.name} "
               f"({backend}); cached in {cache}")
        recordings, failures = load_recordings(items.iloc[todo].reset_index(drop=True),
                                               params, jobs)
        for failure in failures:
            report(f"skipped {failure.path}: {failure.message}")
        runner = Backbone(backbone, layers, backend, params.n_frames).load()
        cache.mkdir(parents=True, exist_ok=True)
        by_path = {p: i for i, p in zip(todo, items["path"].iloc[todo])}
        # One call for many recordings, so that every lane of the encoder has work.
        bounds_of = [b[s] for b, s in zip(recordings.bounds, recordings.speech)]
        frames = params.segment_frames(
            np.concatenate([b[:, 1] - b[:, 0] for b in bounds_of] or [[]]))
        every = runner.pooled(list(recordings.features), frames)
        ends = np.cumsum([len(b) for b in bounds_of])
        for r, path in enumerate(recordings.meta["path"]):
            bounds = bounds_of[r]
            states = every[ends[r] - len(bounds) : ends[r]]
            target = cache / f"{keys[by_path[path]]}.npz"
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, states=states.astype(np.float32),
                     durations=bounds[:, 1] - bounds[:, 0])
            os.replace(tmp, target)
    rows, states, durations = [], [], []
    for (_, item), key in zip(items.iterrows(), keys):
        path = cache / f"{key}.npz"
        if not path.is_file():
            continue  # unreadable recording, reported above
        with np.load(path) as cached:
            if len(cached["states"]) == 0:
                continue
            states.append(cached["states"])
            durations.append(cached["durations"])
        rows.append(item.to_dict())
    if not rows:
        raise UsageError("no recording holds speech the backbone can encode")
    return EncodedRecordings(pd.DataFrame(rows).reset_index(drop=True), states, durations,
                             failures)


def default_cache_dir() -> Path:
    """``$ANNOTATE_CACHE``, else ``$XDG_CACHE_HOME/annotate/backbone``, else ``~/.cache/...``."""
    if os.environ.get("ANNOTATE_CACHE"):
        return Path(os.environ["ANNOTATE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "annotate" / "backbone"


def _cache_key(path: str, identity: str) -> str:
    stat = os.stat(path)
    text = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{identity}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def corpus_codes(data: EncodedRecordings) -> np.ndarray:
    """Each recording's corpus as an integer (0 when the items name none)."""
    if "corpus" not in data.meta:
        return np.zeros(len(data.meta), np.int64)
    return pd.factorize(data.meta["corpus"].astype(str))[0].astype(np.int64)


@dataclass
class Copies:
    """Augmented copies that train beside the originals (never validated).

    Attributes:
        data: The copies' encoded recordings.
        original: Per copy, the index of its original recording.
    """

    data: EncodedRecordings
    original: np.ndarray

    def segments(self, layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every copy's segments, each owned by the copy's original recording."""
        x, owner, durations = self.data.segments(layers)
        return x, self.original[owner], durations


def training_rows(data: EncodedRecordings, copies: Copies | None, layers: tuple[int, ...]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments of originals then copies: features, owning original, duration, is-a-copy."""
    x, owner, durations = data.segments(layers)
    if copies is None or not len(copies.original):
        return x, owner, durations, np.zeros(len(x), bool)
    xc, oc, dc = copies.segments(layers)
    return (np.concatenate([x, xc]), np.concatenate([owner, oc]),
            np.concatenate([durations, dc]),
            np.concatenate([np.zeros(len(x), bool), np.ones(len(xc), bool)]))
