"""Language along a recording: segment posteriors smoothed by a two-way sticky HMM.

A recording's language rarely changes between neighbouring segments, so an
isolated segment that disagrees with both neighbours is more likely an
error than a switch. The hidden state is the language; it stays with
probability ``1 - switch_probability`` from one speech segment to the next
and otherwise moves to any other candidate; each segment's calibrated
posterior (over a uniform prior) is its evidence. Forward-backward gives
each segment's posterior given the whole recording: a real switch, backed
by several segments, survives; a lone outlier is outvoted.
"""

from __future__ import annotations

import numpy as np


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
