"""Heads on a pretrained backbone: features cached once, a search over speaker folds, calibration.

``annotate train ... --architecture head`` ends here. The recordings go
through ``annotate run``'s own path (segments, speech detection, Whisper
log-mel) and the backbone's run-time encoder, once: each recording's pooled
hidden states are cached on disk, keyed by its file and the backbone, so
that a search, a retraining or another head never encodes it again.

A head is a small Keras network on the pooled states of some hidden
layers: standardisation, dropout, an optional hidden layer, logits. Which
layers, the hidden width, L2, dropout, learning rate and epochs are chosen
by a search (optuna's TPE sampler, ``--search N`` trials) on the
per-recording UAR over speaker-disjoint folds of the training speakers,
averaged over corpora; the test speakers are never seen. The temperature
is fitted on the out-of-fold logits of the chosen settings, which also give
the validation metrics written to ``model.json``; the final head is then
trained on every training speaker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from annotate.errors import InputError, UsageError
from annotate.modelling.backbone_folder import BackboneSpec
from annotate.modelling.model_folder import BackboneInput, ModelSpec, write_model_folder
from annotate.modelling.networks import build_head
from annotate.modelling.posteriors import recording_means, softmax, uar
from annotate.training.copies import copy_sources

Report = Callable[[str], None]

#: Hidden-state choices the search draws from (those past the export are dropped).
LAYER_CHOICES: tuple[tuple[int, ...], ...] = (
    (2,), (3,), (4,), (2, 3), (3, 4), (2, 3, 4), (2, 4),
)
#: Settings used without a search (``--search 0``): those the bundled
#: heads' searches most often chose.
DEFAULT_SETTINGS = {"layers": (3, 4), "hidden": 0, "l2": 1e-3, "dropout": 0.2,
                    "learning_rate": 1e-3, "epochs": 40}
BATCH_SIZE = 64


@dataclass
class EncodedRecordings:
    """Recordings as the backbone sees them at run time.

    Attributes:
        meta: One row per recording (the corpus items, plus ``duration_s``).
        states: Per recording, np.ndarray [shape=(n_speech, n_states, width)]:
            pooled hidden states 0..n_states-1 of each speech segment.
        durations: Per recording, each speech segment's duration in seconds.
    """

    meta: pd.DataFrame
    states: list[np.ndarray]
    durations: list[np.ndarray]

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
    return EncodedRecordings(pd.DataFrame(rows).reset_index(drop=True), states, durations)


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


# --- the head network -------------------------------------------------------------------------


def fit_head(x: np.ndarray, y: np.ndarray, weights: np.ndarray, n_labels: int, settings: dict,
             seed: int):
    """Train a head on segment features ``x`` [n, d] with labels ``y`` and sample weights."""
    from annotate.modelling.inference import tensorflow

    tf = tensorflow()
    mean, variance = x.mean(axis=0), x.var(axis=0) + 1e-6
    model = build_head(x.shape[1], n_labels, settings, mean, variance, seed)
    model.compile(optimizer=tf.keras.optimizers.Adam(settings["learning_rate"]),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, sample_weight=weights, batch_size=BATCH_SIZE, epochs=int(settings["epochs"]),
              shuffle=True, verbose=0)
    return model


def balanced_weights(y: np.ndarray, n_labels: int, corpus: np.ndarray | None = None) -> np.ndarray:
    """Sample weights (mean 1) giving every corpus the same total weight, and within
    each corpus every label present the same share.

    Without balancing, the largest corpus would decide: RAVDESS's 960 actors'
    recordings against Common Voice's 210 for the language head.
    """
    corpus = np.zeros(len(y), np.int64) if corpus is None else np.asarray(corpus)
    weights = np.zeros(len(y), np.float64)
    groups = np.unique(corpus)
    for group in groups:
        members = corpus == group
        labels_here = np.unique(y[members])
        for label in labels_here:
            cell = members & (y == label)
            weights[cell] = 1.0 / (len(groups) * len(labels_here) * cell.sum())
    return (weights * len(y)).astype(np.float32)


# --- folds, search, calibration ---------------------------------------------------------------


def speaker_folds(speakers: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Recording indices of each fold's validation speakers (speaker-disjoint folds)."""
    unique = sorted(set(speakers))
    if len(unique) < 2:
        raise UsageError(f"a speaker-disjoint validation needs 2 speakers or more, got {unique}")
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    k = min(n_folds, len(unique))
    fold_of = {speaker: i % k for i, speaker in enumerate(order)}
    return [np.flatnonzero([fold_of[s] == f for s in speakers]) for f in range(k)]


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


def fold_heads(data: EncodedRecordings, y_rec: np.ndarray, n_labels: int, settings: dict,
               folds: list[np.ndarray], seed: int, copies: Copies | None = None):
    """For each fold, the head trained without its recordings: yields ``(fold, model)``.

    A fold's head also trains on the copies of the other folds' recordings.
    """
    x, owner, durations, _ = training_rows(data, copies, tuple(settings["layers"]))
    corpus = corpus_codes(data)[owner]
    for f, validation in enumerate(folds):
        train = ~np.isin(owner, validation)
        y = y_rec[owner[train]]
        weights = balanced_weights(y, n_labels, corpus[train]) * durations[train] / 3.0
        yield f, fit_head(x[train], y, weights, n_labels, settings, seed + f)


def out_of_fold_logits(data: EncodedRecordings, y_rec: np.ndarray, n_labels: int, settings: dict,
                       folds: list[np.ndarray], seed: int, copies: Copies | None = None
                       ) -> np.ndarray:
    """Every original segment's logits from the head trained without its speaker's fold."""
    x, owner, _ = data.segments(tuple(settings["layers"]))
    logits = np.zeros((len(x), n_labels), np.float32)
    for f, model in fold_heads(data, y_rec, n_labels, settings, folds, seed, copies):
        scored = np.isin(owner, folds[f])
        logits[scored] = model.predict(x[scored], batch_size=256, verbose=0)
    return logits


def whisper_language_logits(backbone: BackboneSpec, items: pd.DataFrame, window_s: float = 3.0,
                            jobs: int | None = None) -> tuple[np.ndarray, pd.DataFrame, list]:
    """Whisper's language logits of every speech segment of ``items``, cut as ``annotate run`` cuts.

    On LiteRT: the backbone's ``model.tflite`` then ``language.tflite``.

    Returns:
        Logits [shape=(n_segments, 99)], one row of ``items`` per segment
        (its recording's), and the recordings that could not be read.
    """
    from annotate.backbone.runtime import Backbone
    from annotate.training.training_data import load_recordings

    params = dataclasses.replace(backbone.features, segment_s=window_s)
    recordings, failures = load_recordings(items, params, jobs)
    features, owner = recordings.stacked(params)
    durations = np.concatenate([recordings.speech_durations(i) for i in range(len(recordings))]
                               or [np.zeros(0)])
    runner = Backbone(backbone, (0,), "litert", params.n_frames, language=True)
    _, logits = runner.encode([features], params.segment_frames(durations))
    return logits, recordings.meta.iloc[owner].reset_index(drop=True), failures


def whisper_language_probs(backbone: BackboneSpec, data: EncodedRecordings,
                           labels: tuple[str, ...], window_s: float,
                           jobs: int | None = None) -> np.ndarray:
    """Whisper's calibrated probabilities of ``labels`` for each speech segment of ``data``.

    The recordings are read again (``data`` holds pooled states only) and cut
    as they were when encoded; the rows are in the order of ``data.segments``.

    Raises:
        InputError: A recording could not be read again, or gave other segments.
    """
    from annotate.labels import WHISPER_LANGUAGES

    _, owner, _ = data.segments((0,))
    logits, rows, failures = whisper_language_logits(backbone, data.meta, window_s, jobs)
    paths = data.meta["path"].astype(str).to_numpy()[owner]
    if failures or len(rows) != len(owner) or (rows["path"].astype(str).to_numpy() != paths).any():
        raise InputError("the recordings read differently than when they were encoded "
                         f"({len(rows)} segments for Whisper, {len(owner)} encoded)")
    tokens = [WHISPER_LANGUAGES.index(label) for label in labels]
    return softmax(logits[:, tokens].astype(np.float64), backbone.language.temperature)


def fit_language_cascade(data: EncodedRecordings, head: np.ndarray, y_rec: np.ndarray,
                         labels: tuple[str, ...], backbone: BackboneSpec, window_s: float,
                         jobs: int | None, report: Report = print):
    """The language cascade of a head, from its calibrated out-of-fold probabilities.

    Whisper's language step scores every speech segment of ``data`` (the
    recordings are read again: the cache holds pooled states only), and
    :func:`annotate.modelling.language_fusion.fit_cascade` picks the
    threshold and weights, every corpus weighing the same.

    Returns:
        A :class:`annotate.modelling.model_folder.LanguageCascade`, or None
        (reported) where it cannot be fitted: no language step in the
        backbone, or labels that are not Whisper's codes.
    """
    from annotate.labels import WHISPER_LANGUAGES
    from annotate.modelling.language_fusion import fit_cascade
    from annotate.modelling.model_folder import LanguageCascade

    if backbone.language is None or backbone.language_problem() is not None:
        report(f"no cascade: {backbone.name} has no usable language step (language.tflite)")
        return None
    unknown = [label for label in labels if label not in WHISPER_LANGUAGES]
    if unknown:
        report(f"no cascade: Whisper has no code {', '.join(unknown)}")
        return None
    _, owner, durations = data.segments((0,))
    report(f"cascade: Whisper's language step on {len(owner)} segments")
    try:
        whisper = whisper_language_probs(backbone, data, labels, window_s, jobs)
    except InputError as error:
        report(f"no cascade: {error}")
        return None
    group = data.meta.get("corpus", pd.Series([""] * len(data.meta))).astype(str).to_numpy()
    fit = fit_cascade(head, whisper, y_rec[owner], owner, durations, group)
    chosen = next(row for row in fit.table if row["threshold"] == fit.threshold)
    alone = fit.table[0]
    report(f"cascade: threshold {fit.threshold}, weights {fit.head_weight} / "
           f"{fit.whisper_weight}, {chosen['asked']:.1%} of segments asked; validation mean "
           f"accuracy {alone['mean_accuracy']:.3f} (head alone) -> {chosen['mean_accuracy']:.3f}")
    if fit.threshold == 0.0:
        return None
    return LanguageCascade(
        fit.threshold, fit.head_weight, fit.whisper_weight,
        fitted_on=(f"speech segments of {len(data.meta)} training recordings, head logits out "
                   "of fold (annotate train)"),
        validation={"per_recording_accuracy": fit.table, "asked": chosen["asked"]})


#: Temperatures :func:`fit_speaker_adaptation` tries.
SPEAKER_TEMPERATURES = tuple(round(0.5 + 0.05 * i, 2) for i in range(31))


def fit_speaker_adaptation(probs: np.ndarray, owner: np.ndarray, durations: np.ndarray,
                           y_rec: np.ndarray, speakers: np.ndarray, corpus: np.ndarray,
                           served: np.ndarray, n_labels: int, fitted_on: str,
                           report: Report = print):
    """An emotion head's temperature for ``annotate run --speakers``, from validation speakers.

    Each corpus's served recordings are adapted as one run (its speakers
    against each other, :func:`annotate.modelling.posteriors.adapt_to_speakers`);
    the temperature with the least negative log-likelihood of the adapted
    segments' labels wins.

    Args:
        probs: Calibrated out-of-fold probabilities of each segment [shape=(n, k)].
        owner, durations: Each segment's recording and duration.
        y_rec, speakers, corpus, served: Per recording: its label, speaker,
            corpus, and whether the head serves it (its languages).
        n_labels: Labels of the head.
        fitted_on: What the recordings are, for the model folder.

    Returns:
        A :class:`annotate.modelling.model_folder.SpeakerAdaptation`, or None
        (reported) when no corpus has two speakers with enough speech.
    """
    from annotate.modelling.model_folder import SpeakerAdaptation
    from annotate.modelling.posteriors import adapt_to_speakers
    from annotate.training.metrics import expected_calibration_error

    corpora = sorted(set(corpus[served]))

    def adapted(temperature: float) -> tuple[np.ndarray, np.ndarray]:
        out, mask = probs.copy(), np.zeros(len(probs), bool)
        for c in corpora:
            rows = served[owner] & (corpus[owner] == c)
            out[rows], mask[rows] = adapt_to_speakers(probs[rows], speakers[owner][rows],
                                                      durations[rows], temperature)
        return out, mask

    truth = y_rec[owner]
    if not adapted(1.0)[1].any():
        report("no per-speaker temperature: no corpus has two speakers with enough speech")
        return None
    nll = {}
    for temperature in SPEAKER_TEMPERATURES:
        out, mask = adapted(temperature)
        nll[temperature] = float(-np.mean(np.log(np.maximum(out[mask, truth[mask]], 1e-12))))
    best = min(nll, key=nll.get)
    out, _ = adapted(best)
    plain = recording_means(probs, owner, durations, len(y_rec))
    adapt = recording_means(out, owner, durations, len(y_rec))
    table = {}
    for c in corpora:
        recs = np.flatnonzero(served & (corpus == c))
        table[c] = {"recordings": int(len(recs)), "speakers": int(len(set(speakers[recs]))),
                    "uar_plain": uar(y_rec[recs], plain[recs].argmax(axis=1), n_labels),
                    "uar_adapted": uar(y_rec[recs], adapt[recs].argmax(axis=1), n_labels),
                    "ece_plain": float(expected_calibration_error(plain[recs], y_rec[recs])),
                    "ece_adapted": float(expected_calibration_error(adapt[recs], y_rec[recs]))}
        r = table[c]
        report(f"per speaker on {c} ({r['speakers']} speakers, {r['recordings']} recordings): "
               f"UAR {r['uar_plain']:.3f} -> {r['uar_adapted']:.3f}, ECE {r['ece_plain']:.3f} "
               f"-> {r['ece_adapted']:.3f} at temperature {best}")
    return SpeakerAdaptation(best, fitted_on=fitted_on,
                             validation={"corpora": table,
                                         "temperatures": {str(t): v for t, v in nll.items()}})


def validation_score(true: np.ndarray, predicted: np.ndarray, corpus: np.ndarray,
                     n_labels: int) -> float:
    """The search's objective: per-recording UAR of each corpus, averaged over corpora.

    Every corpus counts the same, so that a small corpus the model finds hard
    (Common Voice for the language head) is not drowned by an easy large one.
    """
    return float(np.mean([uar(true[corpus == c], predicted[corpus == c], n_labels)
                          for c in np.unique(corpus)]))


def search_settings(data: EncodedRecordings, y_rec: np.ndarray, n_labels: int,
                    folds: list[np.ndarray], trials: int, max_layer: int, seed: int,
                    report: Report, copies: Copies | None = None) -> tuple[dict, list[dict]]:
    """The settings with the best mean validation UAR over ``trials`` TPE trials."""
    choices = [c for c in LAYER_CHOICES if max(c) <= max_layer] or [(max_layer,)]
    _, owner, durations = data.segments(choices[0])

    corpus = corpus_codes(data)

    def score(settings: dict) -> float:
        logits = out_of_fold_logits(data, y_rec, n_labels, settings, folds, seed, copies)
        rec = recording_means(softmax(logits), owner, durations, len(y_rec))
        return validation_score(y_rec, rec.argmax(axis=1), corpus, n_labels)

    if trials <= 0:
        settings = dict(DEFAULT_SETTINGS, layers=choices[-1] if max_layer < 4 else (3, 4))
        return settings, [{"settings": _jsonable(settings), "validation_uar": score(settings)}]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    history: list[dict] = []

    def objective(trial) -> float:
        settings = {
            "layers": choices[trial.suggest_categorical("layers", list(range(len(choices))))],
            "hidden": trial.suggest_categorical("hidden", [0, 256]),
            "l2": trial.suggest_float("l2", 1e-5, 1e-1, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.6),
            "learning_rate": trial.suggest_float("learning_rate", 2e-4, 3e-3, log=True),
            "epochs": trial.suggest_int("epochs", 10, 60, step=10),
        }
        value = score(settings)
        history.append({"settings": _jsonable(settings), "validation_uar": value})
        report(f"  trial {len(history)}/{trials}: validation UAR {value:.3f} "
               f"{_jsonable(settings)}")
        return value

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({"layers": choices.index((3, 4)) if (3, 4) in choices else 0,
                         "hidden": 0, "l2": 1e-3, "dropout": 0.2, "learning_rate": 1e-3,
                         "epochs": 40})
    study.optimize(objective, n_trials=trials)
    best = max(history, key=lambda h: h["validation_uar"])["settings"]
    return dict(best, layers=tuple(best["layers"])), history


#: Switch probabilities tried for the language smoothing.
SWITCH_GRID = (0.02, 0.05, 0.1, 0.2, 0.35)


def fit_switch_probability(probs: np.ndarray, owner: np.ndarray, y_rec: np.ndarray,
                           rng: np.random.Generator, sequences: int = 400
                           ) -> tuple[float, dict[str, float]]:
    """The switch probability that best labels validation segments of recordings that switch.

    Out-of-fold segment posteriors of validation recordings are strung into
    sequences of 2-4 runs of one language each (2-6 recordings a run, as in
    a recording that switches language a few times); each probability of
    :data:`SWITCH_GRID` smooths them, and the one with the best segment
    accuracy wins (no smoothing is the baseline, written as ``"none"``).
    """
    from annotate.modelling.posteriors import smooth_language

    by_label: dict[int, list[int]] = {}
    for r, label in enumerate(y_rec):
        by_label.setdefault(int(label), []).append(r)
    segments_of = {r: np.flatnonzero(owner == r) for r in range(len(y_rec))}
    languages = sorted(by_label)
    built = []
    for _ in range(sequences):
        runs = int(rng.integers(2, 5))
        order = [int(rng.choice(languages))]
        while len(order) < runs:
            order.append(int(rng.choice([x for x in languages if x != order[-1]])))
        rows, truth = [], []
        for label in order:
            for r in rng.choice(by_label[label], size=int(rng.integers(2, 7))):
                rows.extend(segments_of[int(r)])
                truth.extend([label] * len(segments_of[int(r)]))
        built.append((np.asarray(rows), np.asarray(truth)))
    scores = {}
    for p in (None, *SWITCH_GRID):
        hits = total = 0
        for rows, truth in built:
            smoothed = probs[rows] if p is None else smooth_language(probs[rows], p)
            hits += int((smoothed.argmax(axis=1) == truth).sum())
            total += len(truth)
        scores["none" if p is None else str(p)] = round(hits / total, 4)
    best = max(SWITCH_GRID, key=lambda p: scores[str(p)])
    return float(best), scores


def calibration_rows(data: EncodedRecordings, languages: tuple[str, ...]) -> np.ndarray:
    """The recordings a head's temperature is fitted on: those in the languages it serves.

    A head for one language may train on other languages' recordings too
    (emotion-it on EmoDB and RAVDESS beside EMOVO); its probabilities should
    be calibrated where it will be used. A cross-lingual head (``*``), a
    language head, or recordings without a language column: all of them.
    """
    every = np.ones(len(data.meta), bool)
    if "*" in languages or "language" not in data.meta:
        return every
    served = data.meta["language"].isin(languages).to_numpy()
    return served if served.any() else every


def _jsonable(settings: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}


# --- the whole job ----------------------------------------------------------------------------


def train_head(task: str, data: EncodedRecordings, labels: tuple[str, ...],
               languages: tuple[str, ...], backbone: BackboneSpec, backend: str,
               output_dir: Path, name: str, trials: int = 0, n_folds: int = 4, seed: int = 0,
               training_info: dict | None = None, smooth_language: bool = False,
               cascade: bool = False, window_s: float = 3.0, jobs: int | None = None,
               report: Report = print) -> ModelSpec:
    """Search, calibrate, train and write a head model folder (with its LiteRT export).

    Args:
        task: ``language`` or ``emotion``.
        data: The training speakers' encoded recordings; ``meta`` has
            ``label`` and ``speaker`` columns.
        labels: Output labels, in order; recordings with other labels are dropped.
        languages: Languages the model serves (``["*"]`` for any).
        backbone: The backbone the head reads.
        backend: The backend ``data`` was encoded with (written to the card).
        output_dir: The model folder to write.
        name: The model's name.
        trials: Search trials (0: :data:`DEFAULT_SETTINGS`).
        n_folds: Speaker-disjoint validation folds.
        seed: Seeds folds, search and weights.
        training_info: Extra facts for ``model.json``'s ``training`` entry.
        smooth_language: Fit a switch probability for smoothing the
            language along recordings (:func:`fit_switch_probability`).
        cascade: For a language head on a backbone with Whisper's language
            step, also fit when to ask it and how to fuse the two
            (:func:`fit_language_cascade`), on the same out-of-fold logits.
        window_s: The window ``data`` was encoded with (for the cascade).
        jobs: Feature jobs (for the cascade).
    """
    from annotate.modelling.litert_export import convert_to_litert
    from annotate.training.metrics import expected_calibration_error
    from annotate.training.train import fit_temperature

    data = data.subset(data.meta["label"].isin(labels).to_numpy())
    data, copy_data, copy_original = data.split_copies()
    copies = Copies(copy_data, copy_original) if len(copy_original) else None
    index = {label: i for i, label in enumerate(labels)}
    y_rec = data.meta["label"].map(index).to_numpy().astype(np.int64)
    missing = [label for label in labels if label not in set(data.meta["label"])]
    if missing:
        raise UsageError(f"no training recording is labelled {', '.join(missing)}")
    speakers = (data.meta.get("corpus", pd.Series([""] * len(data.meta))).astype(str) + ":"
                + data.meta["speaker"].astype(str)).to_numpy()
    folds = speaker_folds(speakers, n_folds, seed)
    max_layer = data.states[0].shape[1] - 1
    report(f"{task} head on {backbone.name}: {len(data.meta)} recordings "
           f"(+ {len(copy_original)} augmented copies), {len(set(speakers))} speakers, "
           f"{len(folds)} speaker folds, {trials} search trials")
    settings, history = search_settings(data, y_rec, len(labels), folds, trials, max_layer, seed,
                                        report, copies)
    logits = out_of_fold_logits(data, y_rec, len(labels), settings, folds, seed, copies)
    x, owner, durations = data.segments(tuple(settings["layers"]))
    fitted = calibration_rows(data, languages)
    served = fitted[owner]
    temperature = fit_temperature(logits[served], y_rec[owner][served])
    rec = recording_means(softmax(logits, temperature), owner, durations, len(data.meta))
    metrics = {
        "split": f"out-of-fold over {len(folds)} speaker-disjoint folds of the training speakers",
        "recordings": int(len(rec)),
        "uar": uar(y_rec, rec.argmax(axis=1), len(labels)),
        "mean_corpus_uar": validation_score(y_rec, rec.argmax(axis=1), corpus_codes(data),
                                            len(labels)),
        "accuracy": float(np.mean(rec.argmax(axis=1) == y_rec)),
        "ece": float(expected_calibration_error(rec, y_rec)),
        "segment_ece": float(expected_calibration_error(softmax(logits, temperature),
                                                        y_rec[owner])),
        "temperature_fitted_on": int(fitted.sum()),
        "ece_where_fitted": float(expected_calibration_error(rec[fitted], y_rec[fitted])),
    }
    report(f"validation: UAR {metrics['uar']:.3f}, accuracy {metrics['accuracy']:.3f}, "
           f"ECE {metrics['ece']:.3f}, temperature {temperature:.2f}")
    switch = None
    if smooth_language:
        switch, switch_table = fit_switch_probability(
            softmax(logits, temperature), owner, y_rec, np.random.default_rng(seed))
        metrics["switch_probability"] = {"chosen": switch, "validation": switch_table}
        report(f"switch probability {switch} (segment accuracy on validation sequences: "
               f"{switch_table})")
    fitted_cascade = None
    if cascade:
        fitted_cascade = fit_language_cascade(
            data, softmax(logits, temperature), y_rec, labels, backbone, window_s, jobs, report)
    speaker_fit = None
    if task != "language":
        corpus = data.meta.get("corpus", pd.Series([""] * len(data.meta))).astype(str)
        speaker_fit = fit_speaker_adaptation(
            softmax(logits, temperature), owner, durations, y_rec, speakers,
            corpus.to_numpy(), fitted, len(labels),
            f"the training recordings it serves, out of fold over {len(folds)} speaker folds, "
            "each corpus adapted as one run", report)
    x, owner, durations, _ = training_rows(data, copies, tuple(settings["layers"]))
    y = y_rec[owner]
    weights = balanced_weights(y, len(labels), corpus_codes(data)[owner]) * durations / 3.0
    model = fit_head(x, y, weights, len(labels), settings, seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(output_dir / "model.keras")
    spec = ModelSpec(
        folder=output_dir, name=name, task=task, labels=tuple(labels),
        languages=tuple(languages), weights="model.keras", features=backbone.features,
        temperature=float(temperature),
        training={
            **(training_info or {}),
            "backbone": backbone.name,
            "backbone_backend": backend,
            "augmented_copies": int(len(copy_original)),
            "settings": _jsonable(settings),
            "search": {"trials": trials, "sampler": "optuna TPE" if trials else None,
                       "objective": "per-recording UAR of each corpus on the out-of-fold "
                                    "predictions, averaged over corpora",
                       "history": history},
            "seed": seed,
        },
        metrics={"validation": metrics},
        backbone=BackboneInput(backbone.name, tuple(settings["layers"]), "stats",
                               backbone.pooled_width),
        switch_probability=switch,
        cascade=fitted_cascade,
        speaker_adaptation=speaker_fit,
    )
    spec = convert_to_litert(spec, required=False)
    write_model_folder(spec, head_card(spec))
    return spec


def head_card(spec: ModelSpec) -> str:
    """A model card for a head (data, split, settings, validation figures, limits)."""
    v = spec.metrics.get("validation", {})
    held = spec.metrics.get("heldout", {})
    info = spec.training
    data = info.get("corpora") or "see model.json"
    if not isinstance(data, str):
        data = ", ".join(f"{c['name']} ({c['root']})" for c in data)
    cross = ("" if "*" not in spec.languages else
             "\n**Cross-lingual.** It serves every language without an emotion model of "
             "its own (French among them): no training recording was in those languages, "
             "so expect lower accuracy there than on the corpora it was trained on.\n")
    article = "An" if spec.task[0] in "aeiou" else "A"
    rows = "".join(
        f"| {name} | {r.get('n', '')} | {r.get('uar', float('nan')):.3f} | "
        f"{r.get('accuracy', float('nan')):.3f} | {r.get('ece', float('nan')):.3f} |\n"
        for name, r in held.get("sets", {}).items())
    heldout = (f"\n## Held out ({held.get('split', '')})\n\n| test set | recordings | UAR | "
               f"accuracy | ECE |\n|---|---|---|---|---|\n{rows}" if rows else "")
    switch = (f" Its probabilities are smoothed along each recording with switch "
              f"probability {spec.switch_probability} (fitted on validation sequences)."
              if spec.switch_probability else "")
    cascade = ""
    if spec.cascade is not None:
        c = spec.cascade
        cascade = (f"\n**Cascade.** Where its top probability is below {c.threshold}, the "
                   "segment also goes through Whisper's own language identification (the "
                   "backbone's `language.tflite`), and its probabilities become "
                   f"softmax({c.head_weight} log p_head + {c.whisper_weight} log p_whisper): "
                   f"{c.validation.get('asked', float('nan')):.1%} of the validation segments. "
                   f"Chosen on {c.fitted_on} (`scripts/fit_language_cascade.py`). "
                   "`annotate run --language-id head` runs the head alone.\n")
    if spec.speaker_adaptation is not None:
        a = spec.speaker_adaptation
        gains = "; ".join(f"{name} UAR {r['uar_plain']:.3f} -> {r['uar_adapted']:.3f}"
                          for name, r in a.validation.get("corpora", {}).items())
        cascade += (f"\n**Per speaker.** With `annotate run --speakers`, each speaker's "
                    "log-probabilities are centred on that speaker's mean (the run's mean "
                    f"added back) and divided by {a.temperature:g}, fitted on {a.fitted_on}"
                    f"{': ' + gains if gains else ''}.\n")
    return f"""# {spec.name}

{article} {spec.task} head on the `{info.get('backbone')}` backbone (its folder holds
the encoder's card and licence): it reads the
mean and standard deviation over each speech segment of hidden states
{list(spec.backbone.layers)} and outputs {len(spec.labels)} logits
({', '.join(spec.labels)}), divided by the calibration temperature
{spec.temperature:.3f}.{switch} Serves: {', '.join(spec.languages)}.
{cascade}{cross}
## Data

{data}. Recordings per corpus: {json.dumps(info.get('recordings_per_corpus',
                                                     info.get('recordings', '?')))}.

Licences: {info.get('licences', 'those of the corpora named above')}.
Test speakers: {info.get('test_speakers', 'none held out here: evaluate on other speakers')}.

## Settings (chosen on validation speakers: {info.get('search', {}).get('trials', 0)} trials)

`{json.dumps(info.get('settings'))}`

## Validation ({v.get('split', '')})

| recordings | UAR | accuracy | ECE |
|---|---|---|---|
| {v.get('recordings', '')} | {v.get('uar', float('nan')):.3f} | {v.get('accuracy', float('nan')):.3f} | {v.get('ece', float('nan')):.3f} |
{heldout}
## Limits

Acted emotion corpora are not everyday speech, and labels carry each
corpus' categories. A segment's label is only as good as 3 s of audio allows.
"""


def train_on_corpora(task: str, corpora: list, output_dir: str | Path, *,
                     backbone: str | Path = "whisper-base", backend: str | None = None,
                     trials: int = 0, n_folds: int = 4, seed: int = 0,
                     languages: list[str] | None = None, window_s: float = 3.0,
                     cache_dir: Path | None = None, jobs: int | None = None,
                     cascade: bool = True,
                     copies: int | None = None,
                     overwrite: bool = False, report: Report = print) -> ModelSpec:
    """``annotate train TASK --corpus ... --architecture head``: a head on a backbone.

    Every recording of the corpora (but those of an official test split) is
    a training recording; validation is over speaker-disjoint folds.

    Args:
        backbone: A bundled backbone's name or a backbone folder.
        backend: How the backbone encodes (default: as ``annotate run`` would).
        copies: Augmented copies per training recording (default:
            :data:`annotate.training.copies.DEFAULT_COPIES` for the task),
            written beside the feature cache.
        cascade: For a language head on a backbone with Whisper's language
            step, fit the cascade too (:func:`fit_language_cascade`).
    """
    from annotate.errors import expected_one_of
    from annotate.labels import EMOTIONS, TASKS
    from annotate.modelling.backbone_folder import read_backbone_folder
    from annotate.modelling.inference import choose_backbone_backend
    from annotate.modelling.model_folder import bundled_models_dir
    from annotate.training.copies import DEFAULT_COPIES, augmented_copies
    from annotate.training.train import check_output_dir, model_languages

    if task not in TASKS:
        raise UsageError(expected_one_of("task", task, TASKS))
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    folder = Path(backbone)
    if not (folder / "backbone.json").is_file():
        folder = bundled_models_dir() / str(backbone)
    spec = read_backbone_folder(folder)
    n_states = spec.litert.n_layers if spec.litert else spec.n_layers
    backend = choose_backbone_backend(spec, tuple(range(n_states + 1)), backend)
    frames = []
    for corpus in corpora:
        items = corpus.items.copy()
        items["corpus"] = corpus.name
        if task == "language":
            items["label"] = items["language"]
        frames.append(items[items["split"].fillna("") != "test"])
    items = pd.concat(frames, ignore_index=True)
    items = items[items["label"].notna()].reset_index(drop=True)
    if items.empty:
        raise UsageError("the corpora hold no labelled training recording")
    copies = DEFAULT_COPIES[task] if copies is None else int(copies)
    if copies:
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        report(f"{copies} augmented copies of each recording in {cache / 'augmented'}")
        items = pd.concat([items, augmented_copies(items, copies, cache / "augmented", seed)],
                          ignore_index=True)
    data = encode_items(items, spec, backend, window_s, cache_dir, jobs, report)
    present = set(data.meta["label"])
    labels = (tuple(e for e in EMOTIONS if e in present) if task == "emotion"
              else tuple(sorted(present)))
    if len(labels) < 2:
        raise UsageError(f"a {task} model needs 2 labels or more, the corpora hold {labels}")
    if output_dir.exists() and overwrite:
        import shutil

        shutil.rmtree(output_dir)
    return train_head(
        task, data, labels, model_languages(task, labels, data.meta, languages), spec, backend,
        output_dir, output_dir.name, trials=trials, n_folds=n_folds, seed=seed,
        training_info={"corpora": [{"name": c.name, "root": str(c.root)} for c in corpora],
                       "recordings": int((copy_sources(data.meta) == "").sum())},
        smooth_language=task == "language", report=report,
        cascade=task == "language" and cascade and spec.language is not None,
        window_s=window_s, jobs=jobs)
