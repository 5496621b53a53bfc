"""Language along a recording: the sticky HMM outvotes a lone outlier and keeps a real switch."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.modelling.posteriors import smooth_language


def posteriors(labels: str, confidence: float = 0.7) -> np.ndarray:
    """Segment posteriors over (a, b, c): ``confidence`` on each segment's letter."""
    rows = np.full((len(labels), 3), (1 - confidence) / 2)
    for i, letter in enumerate(labels):
        rows[i, "abc".index(letter)] = confidence
    return rows


def decoded(probs: np.ndarray) -> str:
    return "".join("abc"[i] for i in probs.argmax(axis=1))


def test_a_lone_outlier_is_outvoted_by_its_neighbours():
    smoothed = smooth_language(posteriors("aaaabaaaa"), 0.05)
    assert decoded(smoothed) == "aaaaaaaaa"
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0)


def test_a_switch_backed_by_several_segments_stays_where_it_is():
    assert decoded(smooth_language(posteriors("aaaaabbbbb"), 0.05)) == "aaaaabbbbb"
    assert decoded(smooth_language(posteriors("aaacccbbb"), 0.05)) == "aaacccbbb"


def test_a_confident_lone_segment_survives_a_weak_prior():
    probs = posteriors("aaaabaaaa")
    probs[4] = [0.001, 0.998, 0.001]
    assert decoded(smooth_language(probs, 0.05)) == "aaaabaaaa"


def test_excluded_languages_stay_at_zero_and_short_input_is_unchanged():
    probs = posteriors("aab")
    probs[:, 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    smoothed = smooth_language(probs, 0.1, np.array([True, True, False]))
    assert np.all(smoothed[:, 2] == 0.0)
    one = posteriors("b")
    np.testing.assert_array_equal(smooth_language(one, 0.1), one)


@pytest.mark.parametrize("p", [0.01, 0.2, 0.5])
def test_more_switching_trusts_each_segment_more(p):
    probs = posteriors("aaaabaaaa", confidence=0.6)
    smoothed = smooth_language(probs, p)
    assert smoothed[4, 1] <= probs[4, 1] + 1e-12
    if p >= 0.5:
        assert decoded(smoothed)[4] == "b"
