"""Choosing a head's settings: speaker folds, out-of-fold logits, a search over settings.

A head is a small Keras network on the pooled states of some hidden layers
(:func:`annotate.modelling.networks.build_head`). Which layers, the hidden
width, L2, dropout, learning rate and epochs are chosen by a search
(optuna's TPE sampler) on the per-recording UAR over speaker-disjoint folds
of the training speakers, averaged over corpora; the test speakers are
never seen.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from annotate.errors import UsageError
from annotate.modelling.networks import build_head
from annotate.modelling.posteriors import recording_means, softmax, uar
from annotate.training.encoding import (
    Copies,
    EncodedRecordings,
    Report,
    corpus_codes,
    training_rows,
)

#: Hidden-state choices the search draws from (those past the export are dropped).
LAYER_CHOICES: tuple[tuple[int, ...], ...] = (
    (2,), (3,), (4,), (2, 3), (3, 4), (2, 3, 4), (2, 4),
)
#: Settings used without a search (``--search 0``): those the bundled
#: heads' searches most often chose.
DEFAULT_SETTINGS = {"layers": (3, 4), "hidden": 0, "l2": 1e-3, "dropout": 0.2,
                    "learning_rate": 1e-3, "epochs": 40}
BATCH_SIZE = 64


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
                    report: Report, copies: Copies | None = None,
                    objective: Callable[[np.ndarray], float] | None = None,
                    hidden: tuple[int, ...] = (0, 256)) -> tuple[dict, list[dict]]:
    """The settings with the best validation score over ``trials`` TPE trials.

    Args:
        objective: Scores the recordings' out-of-fold probabilities
            [shape=(n_recordings, n_labels)]; default: :func:`validation_score`.
        hidden: The hidden widths the search may choose (0: a linear head).
    """
    choices = [c for c in LAYER_CHOICES if max(c) <= max_layer] or [(max_layer,)]
    _, owner, durations = data.segments(choices[0])

    corpus = corpus_codes(data)

    def judge(rec: np.ndarray) -> float:
        if objective is not None:
            return objective(rec)
        return validation_score(y_rec, rec.argmax(axis=1), corpus, n_labels)

    def score(settings: dict) -> float:
        logits = out_of_fold_logits(data, y_rec, n_labels, settings, folds, seed, copies)
        return judge(recording_means(softmax(logits), owner, durations, len(y_rec)))

    if trials <= 0:
        settings = dict(DEFAULT_SETTINGS, layers=choices[-1] if max_layer < 4 else (3, 4))
        return settings, [{"settings": jsonable(settings), "validation_uar": score(settings)}]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    history: list[dict] = []

    def trial_score(trial) -> float:
        settings = {
            "layers": choices[trial.suggest_categorical("layers", list(range(len(choices))))],
            "hidden": trial.suggest_categorical("hidden", list(hidden)),
            "l2": trial.suggest_float("l2", 1e-5, 1e-1, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.6),
            "learning_rate": trial.suggest_float("learning_rate", 2e-4, 3e-3, log=True),
            "epochs": trial.suggest_int("epochs", 10, 60, step=10),
        }
        value = score(settings)
        history.append({"settings": jsonable(settings), "validation_uar": value})
        report(f"  trial {len(history)}/{trials}: validation UAR {value:.3f} "
               f"{jsonable(settings)}")
        return value

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({"layers": choices.index((3, 4)) if (3, 4) in choices else 0,
                         "hidden": 0, "l2": 1e-3, "dropout": 0.2, "learning_rate": 1e-3,
                         "epochs": 40})
    study.optimize(trial_score, n_trials=trials)
    best = max(history, key=lambda h: h["validation_uar"])["settings"]
    return dict(best, layers=tuple(best["layers"])), history


def jsonable(settings: dict) -> dict:
    """``settings`` with tuples as lists, as ``model.json`` holds them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
