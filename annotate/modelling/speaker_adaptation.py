"""Emotion probabilities relative to each speaker's own voice (``annotate run --speakers``).

An emotion head on a frozen encoder hears the speaker as well as the
emotion: one actor's neutral voice sounds sad to it, another's angry. When
the run knows who speaks (a manifest's ``speaker`` column, or each
recording's folder), each speaker's emotion log-probabilities are centred on
that speaker's mean and moved to the run's mean instead:

    log p'(segment) = log p(segment) - mean_speaker(log p) + mean_run(log p)

then renormalised, with a temperature fitted on validation speakers (the
head's ``speaker_adaptation`` entry; 1 without one). For a linear head this
is the head applied to features centred per speaker, the usual speaker
normalisation of emotion recognition, computed from the table alone. A
speaker's mean is shrunk towards the run's by :data:`PRIOR_S` seconds of
speech, and speakers with less than :data:`MIN_SPEECH_S` seconds keep their
probabilities: too little speech says nothing of a voice. With fewer than
two such speakers nothing changes: one voice has nothing to be compared with.
The means are duration-weighted, per emotion model.

It assumes that each speaker's recordings span their usual range of
emotions, as in the acted corpora; a speaker heard in one emotion only is
pulled towards the others'.
"""

from __future__ import annotations

import numpy as np

#: Seconds of the run's mean that a speaker's mean is shrunk with. Chosen on
#: training speakers (emotion-en and emotion-de out of fold, 2-16 recordings a
#: speaker): 10 s kept most of the gain where speakers have few recordings.
PRIOR_S = 10.0
#: Speakers with less speech than this (seconds) keep their probabilities.
MIN_SPEECH_S = 20.0
#: Where no probability is given a floor before the logarithm.
_FLOOR = 1e-12


def adapt_to_speakers(probs: np.ndarray, speakers: np.ndarray, durations: np.ndarray,
                      temperature: float = 1.0, prior_s: float = PRIOR_S,
                      min_speech_s: float = MIN_SPEECH_S) -> tuple[np.ndarray, np.ndarray]:
    """Segment probabilities of one emotion model, relative to each speaker.

    Args:
        probs: np.ndarray [shape=(n, k)]: the head's calibrated probabilities.
        speakers: np.ndarray [shape=(n,), object]: each segment's speaker, None
            where unknown (left as it is).
        durations: np.ndarray [shape=(n,)]: each segment's duration in seconds.
        temperature: Divides the centred log-probabilities.
        prior_s: Shrinkage of each speaker's mean towards the run's, in seconds.
        min_speech_s: Speakers with less speech keep their probabilities.

    Returns:
        The probabilities [shape=(n, k), float64], and which rows were adapted.
    """
    probs = np.asarray(probs, np.float64)
    speakers = np.asarray(speakers, dtype=object)
    durations = np.asarray(durations, np.float64)
    out = probs.copy()
    known = np.array([s is not None for s in speakers], bool)
    adapted = np.zeros(len(probs), bool)
    if not known.any():
        return out, adapted
    log_p = np.log(np.maximum(probs, _FLOOR))
    weights = np.maximum(durations, 1e-9)
    run_mean = np.average(log_p[known], axis=0, weights=weights[known])
    # One pass groups the rows by speaker (a corpus may have thousands of them).
    rows = np.flatnonzero(known)
    _, group = np.unique(speakers[rows].astype(str), return_inverse=True)
    speech = np.bincount(group, weights=durations[rows])
    heard = np.flatnonzero(speech >= min_speech_s)
    if len(heard) < 2:  # one voice: nothing to compare it with
        return out, adapted
    sums = np.zeros((len(speech), probs.shape[1]))
    np.add.at(sums, group, log_p[rows] * weights[rows, None])
    own = sums / np.bincount(group, weights=weights[rows])[:, None]
    seconds = speech[:, None]
    mean = (own * seconds + run_mean * prior_s) / (seconds + prior_s)
    keep = np.isin(group, heard)
    rows, group = rows[keep], group[keep]
    scores = (log_p[rows] - mean[group] + run_mean) / temperature
    scores -= scores.max(axis=1, keepdims=True)
    scores = np.exp(scores)
    out[rows] = scores / scores.sum(axis=1, keepdims=True)
    adapted[rows] = True
    return out, adapted
