"""Posterior arithmetic shared by ``annotate run``, ``annotate evaluate`` and training.

One place for what turns a model's outputs into the probabilities a table
holds, so that a run and an evaluation of the same model cannot drift apart:

- :func:`softmax`: calibrated probabilities from logits;
- :func:`recording_means`: a recording's duration-weighted mean of its
  segments' probabilities (which language a recording is in; per-recording
  scores);
- :func:`fuse_language`, :func:`apply_cascade`: the language head and
  Whisper's language identification together (the cascade);
- :func:`smooth_language`: language along a recording;
- :func:`adapt_to_speakers`: emotions relative to each speaker's voice;
- :func:`uar`: the mean recall every validation score is read from.

**The cascade.** The head on the encoder's states is fast and sure of most
segments; where it is unsure (its top probability below a threshold),
Whisper's own language step, which has heard far more speakers and accents,
is asked too, and the two are fused: ``softmax(a * log p_head + b * log
p_whisper)``, a logistic fusion whose weights are fitted by log-likelihood on
the validation segments the threshold sends on
(:mod:`annotate.modelling.language_fusion` fits them).

**Smoothing.** Language along a recording: segment posteriors smoothed by a two-way sticky HMM.

A recording's language rarely changes between neighbouring segments, so an
isolated segment that disagrees with both neighbours is more likely an
error than a switch. The hidden state is the language; it stays with
probability ``1 - switch_probability`` from one speech segment to the next
and otherwise moves to any other candidate; each segment's calibrated
posterior (over a uniform prior) is its evidence. Forward-backward gives
each segment's posterior given the whole recording: a real switch, backed
by several segments, survives; a lone outlier is outvoted.

**Speakers.** Emotion probabilities relative to each speaker's own voice (``annotate run --speakers``).

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

**The run.** A head trained for transfer (the cross-lingual emotion model,
:mod:`annotate.training.transfer`) learnt from each corpus centred on its
own mean; a run is one more corpus to it. Its log-probabilities are centred
on the run's duration-weighted mean, shrunk towards the training mean by
the head's ``prior_s`` seconds, and moved to the training mean:

    log p'(segment) = log p(segment) - mean_run(log p) + mean_logits / T

For a linear head this is the head applied to the run's states centred on
their mean. A run of a few seconds keeps its probabilities; a corpus's
worth of speech is heard relative to itself. It assumes that the run spans
a range of emotions, as the corpora did: a run of angry speech only is
pulled towards the others.
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


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64, rows summing to 1.

    Each row is computed on its own: numpy's vectorised ``exp`` gives an
    element other last bits in a SIMD lane than in the loop's tail, so over
    a whole array a row's probabilities would depend on how many rows came
    before it (a cluster shard against the local run).
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    out = np.empty_like(scaled)
    for i, row in enumerate(scaled):
        exp = np.exp(row - row.max())
        out[i] = exp / exp.sum()
    return out


def recording_means(probs: np.ndarray, owner: np.ndarray, durations: np.ndarray,
                    n_recordings: int) -> np.ndarray:
    """Duration-weighted mean of each recording's segment probabilities.

    Args:
        probs: np.ndarray [shape=(n_segments, k)].
        owner: np.ndarray [shape=(n_segments,), int]: each segment's recording.
        durations: np.ndarray [shape=(n_segments,)]: each segment's seconds.
        n_recordings: How many recordings (rows of the result).

    Returns:
        np.ndarray [shape=(n_recordings, k), float64]: zeros for a recording
        without segments.
    """
    probs = np.asarray(probs, np.float64)
    owner = np.asarray(owner, np.int64)
    durations = np.asarray(durations, np.float64)
    sums = np.zeros((n_recordings, probs.shape[1] if probs.ndim == 2 else 0))
    np.add.at(sums, owner, probs * durations[:, None])
    weights = np.bincount(owner, weights=durations, minlength=n_recordings)
    return sums / np.maximum(weights, 1e-9)[:, None]


def recording_mean(probs: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """:func:`recording_means` of one recording's segments [shape=(k,)]."""
    return recording_means(probs, np.zeros(len(probs), np.int64), durations, 1)[0]


def uar(true: np.ndarray, predicted: np.ndarray, n_labels: int) -> float:
    """Unweighted average recall: the mean recall over the labels present in ``true``."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    recalls = [np.mean(predicted[true == k] == k) for k in range(n_labels) if np.any(true == k)]
    return float(np.mean(recalls)) if recalls else float("nan")


def fuse_language(head: np.ndarray, whisper: np.ndarray, head_weight: float,
                  whisper_weight: float) -> np.ndarray:
    """The weighted product of two language distributions, renormalised.

    Args:
        head, whisper: np.ndarray [shape=(n, k)], rows summing to 1 over the
            candidates (0 elsewhere, in both).
        head_weight, whisper_weight: The exponents.

    Returns:
        np.ndarray [shape=(n, k), float64]; 0 where ``head`` is 0.
    """
    head, whisper = np.asarray(head, np.float64), np.asarray(whisper, np.float64)
    tiny = np.finfo(np.float64).tiny
    scores = (head_weight * np.log(np.maximum(head, tiny))
              + whisper_weight * np.log(np.maximum(whisper, tiny)))
    scores[head <= 0] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    out = np.exp(scores)
    return out / out.sum(axis=1, keepdims=True)


def apply_cascade(head: np.ndarray, whisper: np.ndarray, threshold: float, head_weight: float,
                  whisper_weight: float) -> np.ndarray:
    """The cascade's probabilities: the fusion where the head's top is below ``threshold``.

    Args:
        head, whisper: np.ndarray [shape=(n, k)]: each segment's distributions
            (``whisper`` is read only where the head is unsure).

    Returns:
        np.ndarray [shape=(n, k), float64]: ``head``'s rows where it is sure.
    """
    out = np.array(head, dtype=np.float64)
    asked = out.max(axis=1) < threshold
    if asked.any():
        out[asked] = fuse_language(out[asked], np.asarray(whisper)[asked], head_weight,
                                   whisper_weight)
    return out


def language_stretches(labels: np.ndarray, frames: np.ndarray, max_frames: int
                       ) -> list[np.ndarray]:
    """A recording's segments in runs of one language, each at most ``max_frames`` long.

    Args:
        labels: Each speech segment's language (after the smoothing) [shape=(n,)].
        frames: Each segment's log-mel frames [shape=(n,)].
        max_frames: The longest run (a longer one is cut, in order).

    Returns:
        The segment indices of each run, in order.
    """
    out: list[list[int]] = []
    length = 0
    for i, label in enumerate(np.asarray(labels)):
        if not out or label != labels[out[-1][-1]] or length + frames[i] > max_frames:
            out.append([])
            length = 0
        out[-1].append(i)
        length += int(frames[i])
    return [np.array(run, np.int64) for run in out]


def smooth_language(probs: np.ndarray, switch_probability: float,
                    candidates: np.ndarray | None = None) -> np.ndarray:
    """Posterior language of each segment given all the recording's segments.

    Args:
        probs: np.ndarray [shape=(n_segments, n_languages)], rows summing to 1
            (0 for languages that are not candidates), in time order.
        switch_probability: Chance that the language changes between two
            neighbouring speech segments; 0 < p < 1.
        candidates: np.ndarray [shape=(n_languages,), bool]: the languages
            the state may take (default: all).

    Returns:
        np.ndarray [shape=(n_segments, n_languages), float64], rows summing to 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    if n <= 1:
        return probs
    allowed = np.ones(k, bool) if candidates is None else np.asarray(candidates, bool)
    m = int(allowed.sum())
    if m <= 1:
        return probs
    stay = 1.0 - switch_probability
    move = switch_probability / (m - 1)
    evidence = np.where(allowed, np.maximum(probs, 1e-12), 0.0)
    forward = np.empty((n, k))
    state = np.where(allowed, 1.0 / m, 0.0) * evidence[0]
    forward[0] = state / state.sum()
    for t in range(1, n):
        prior = forward[t - 1] * stay + (1.0 - forward[t - 1]) * move
        state = np.where(allowed, prior, 0.0) * evidence[t]
        forward[t] = state / state.sum()
    backward = np.ones((n, k))
    for t in range(n - 2, -1, -1):
        message = backward[t + 1] * evidence[t + 1]
        total = message.sum()
        state = stay * message + move * (total - message)
        state = np.where(allowed, state, 0.0)
        backward[t] = state / state.sum()
    posterior = forward * backward
    return posterior / posterior.sum(axis=1, keepdims=True)


def smooth_along_recordings(probs: np.ndarray, owner: np.ndarray, switch_probability: float
                            ) -> np.ndarray:
    """Language posteriors smoothed within each recording (segments in time order)."""
    out = np.array(probs, dtype=np.float64)
    for r in np.unique(owner):
        rows = np.flatnonzero(owner == r)
        out[rows] = smooth_language(out[rows], switch_probability)
    return out


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


def centre_on_run(probs: np.ndarray, durations: np.ndarray, mean_logits: np.ndarray,
                  temperature: float, prior_s: float) -> np.ndarray:
    """A transfer head's segment probabilities, centred on the run's (see the module's "The run").

    Args:
        probs: np.ndarray [shape=(n, k)]: the head's calibrated probabilities
            of every segment of the run.
        durations: np.ndarray [shape=(n,)]: each segment's duration in seconds.
        mean_logits: np.ndarray [shape=(k,)]: the head's training mean logits.
        temperature: The head's temperature (the probabilities are ``softmax(logits / T)``).
        prior_s: Seconds of speech the training mean counts for.

    Returns:
        np.ndarray [shape=(n, k), float64].
    """
    probs = np.asarray(probs, np.float64)
    if not len(probs):
        return probs.copy()
    log_p = np.log(np.maximum(probs, _FLOOR))
    weights = np.maximum(np.asarray(durations, np.float64), 1e-9)
    target = np.asarray(mean_logits, np.float64) / temperature
    seconds = float(weights.sum())
    run_mean = np.average(log_p, axis=0, weights=weights)
    # Log-probabilities and logits / T differ by a constant per row: softmax ignores it.
    centre = (run_mean * seconds + target * prior_s) / (seconds + prior_s)
    scores = log_p - centre + target
    scores -= scores.max(axis=1, keepdims=True)
    scores = np.exp(scores)
    return scores / scores.sum(axis=1, keepdims=True)
