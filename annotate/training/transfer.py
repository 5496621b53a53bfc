"""A cross-lingual head chosen for transfer: a corpus left out at a time, each corpus centred.

The cross-lingual emotion model (``languages ["*"]``) labels every language
without a head of its own, in recordings unlike any corpus it trained on.
It is trained and chosen for that, not for the corpora it has seen:

- **Centred per corpus.** Each training corpus's pooled states are moved
  to one common mean (:func:`centre_corpora`): what sets a corpus apart
  (its language, channel, microphones, actors' style) goes, what sets its
  emotions apart stays. A run is centred the same way when its table is
  written (:func:`annotate.modelling.posteriors.centre_on_run`, from the
  head's ``run_centring`` entry): for a linear head, centring the run's
  log-probabilities on their mean is the head applied to the run's states
  centred on theirs.
- **Leave one corpus out.** The search trains on all corpora but one and
  scores the one left out, in its own language, centred on its own mean as
  a run would be (:func:`corpus_folds`).
- **Shared emotions first.** The objective is the UAR over the emotions
  every training corpus has (:func:`shared_labels`), each recording's
  label the likeliest of them (:func:`transfer_score`); an emotion only one
  corpus has cannot be learnt from the others.
"""

from __future__ import annotations

import numpy as np

from annotate.modelling.posteriors import recording_means, uar
from annotate.training.encoding import EncodedRecordings


def has_corpora_to_leave_out(data: EncodedRecordings) -> bool:
    """Whether ``data`` holds two corpora or more (a ``corpus`` column)."""
    return "corpus" in data.meta and data.meta["corpus"].nunique() >= 2


def centre_corpora(data: EncodedRecordings) -> tuple[EncodedRecordings, np.ndarray]:
    """``data`` with each corpus's states moved to the mean of the corpora's means.

    Each corpus's mean is over its speech segments, weighted by duration;
    the common mean weighs every corpus the same.

    Returns:
        The centred recordings, and the common mean [shape=(n_states, width)].
    """
    corpus = data.meta["corpus"].astype(str).to_numpy()
    means = {}
    for name in sorted(set(corpus)):
        mine = [i for i in np.flatnonzero(corpus == name) if len(data.states[i])]
        states = np.concatenate([data.states[i] for i in mine]).astype(np.float64)
        weights = np.concatenate([data.durations[i] for i in mine])
        means[name] = np.average(states, axis=0, weights=weights)
    common = np.mean(list(means.values()), axis=0)
    shift = {name: (common - mean).astype(np.float32) for name, mean in means.items()}
    states = [s + shift[c] if len(s) else s for s, c in zip(data.states, corpus, strict=True)]
    return EncodedRecordings(data.meta, states, data.durations, data.failures), common


def corpus_folds(data: EncodedRecordings) -> list[np.ndarray]:
    """Recording indices of each corpus: a fold per corpus, in name order."""
    corpus = data.meta["corpus"].astype(str).to_numpy()
    return [np.flatnonzero(corpus == name) for name in sorted(set(corpus))]


def shared_labels(y_rec: np.ndarray, corpus: np.ndarray, n_labels: int) -> np.ndarray:
    """Label indices that every corpus has recordings of."""
    return np.array([k for k in range(n_labels)
                     if all(np.any((corpus == c) & (y_rec == k)) for c in np.unique(corpus))],
                    np.int64)


def learnable_elsewhere(y_rec: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """Recordings whose label some other corpus has: what a fold left out can be scored on."""
    return np.array([np.any((corpus != c) & (y_rec == k)) for k, c in zip(y_rec, corpus,
                                                                          strict=True)], bool)


def transfer_score(y_rec: np.ndarray, rec_probs: np.ndarray, corpus: np.ndarray,
                   shared: np.ndarray) -> float:
    """Mean over corpora of the UAR over ``shared`` labels.

    Each recording's label is the likeliest of them; recordings of other
    labels are not scored.
    """
    return float(np.mean(list(per_corpus_transfer(y_rec, rec_probs, corpus, shared).values())))


def per_corpus_transfer(y_rec: np.ndarray, rec_probs: np.ndarray, corpus: np.ndarray,
                        shared: np.ndarray) -> dict:
    """:func:`transfer_score`'s UAR for each corpus, by its code."""
    scored = np.isin(y_rec, shared)
    position = {int(k): i for i, k in enumerate(shared)}
    true = np.array([position.get(int(k), -1) for k in y_rec])
    predicted = rec_probs[:, shared].argmax(axis=1)
    return {c: uar(true[scored & (corpus == c)], predicted[scored & (corpus == c)], len(shared))
            for c in np.unique(corpus)}


def transfer_metrics(data: EncodedRecordings, y_rec: np.ndarray, labels: tuple[str, ...],
                     shared: np.ndarray, probs: np.ndarray, owner: np.ndarray,
                     durations: np.ndarray) -> dict:
    """What ``model.json`` records of the left-out corpora, from calibrated segment ``probs``.

    Per corpus: its recordings of shared emotions, their UAR and accuracy
    (the likeliest shared emotion), and the ECE over every recording whose
    emotion another corpus has (the full probabilities).
    """
    from annotate.training.metrics import expected_calibration_error

    corpus = data.meta["corpus"].astype(str).to_numpy()
    rec = recording_means(probs, owner, durations, len(y_rec))
    scored, learnable = np.isin(y_rec, shared), learnable_elsewhere(y_rec, corpus)
    uars = per_corpus_transfer(y_rec, rec, corpus, shared)
    table = {}
    for name in sorted(set(corpus)):
        mine = scored & (corpus == name)
        heard = learnable & (corpus == name)
        table[name] = {"recordings": int(mine.sum()), "uar": uars[name],
                       "accuracy": float(np.mean(shared[rec[mine][:, shared].argmax(axis=1)]
                                                 == y_rec[mine])),
                       "ece": float(expected_calibration_error(rec[heard], y_rec[heard]))}
    return {"split": "each corpus left out in turn: trained on the others' training speakers, "
                     "scored on its own, centred on its own mean",
            "labels": [labels[k] for k in shared],
            "mean_uar": float(np.mean([r["uar"] for r in table.values()])),
            "corpora": table}
