"""Whisper's language step in Keras against a plain numpy decoder step (tiny random weights)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from annotate.backbone.whisper_language import (
    FIRST_LANGUAGE_TOKEN,
    LANGUAGE_CODES,
    START_OF_TRANSCRIPT,
    build_language_identifier,
    language_weights,
)
from annotate.testing import tiny_decoder_weights

WIDTH, HEADS, LAYERS = 16, 2, 2


def tiny_decoder(seed: int = 0) -> dict[str, np.ndarray]:
    return tiny_decoder_weights(WIDTH, LAYERS, HEADS, seed)


def reference_logits(v: dict, states: np.ndarray) -> np.ndarray:
    """The decoder run on [start-of-transcript] as Whisper runs it, in float64 numpy."""
    w = {k: np.asarray(x, np.float64) for k, x in v.items()}

    def ln(x, p):
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5) * \
            w[p + "/gamma"] + w[p + "/beta"]

    def lin(p, x):
        return w[p + "/weight"] @ x + w[p + "/bias"]

    x = w["decoder/embeddings/weight"][START_OF_TRANSCRIPT] + \
        w["decoder/position_encodings/encodings"][0]
    d = WIDTH // HEADS
    for i in range(LAYERS):
        p = f"decoder/layer_{i}"
        q, k, val = np.split(lin(p + "/self_attention/linear_0",
                                 ln(x, p + "/self_attention/layer_norm")), 3)
        x = x + lin(p + "/self_attention/linear_1", val)  # one key: its weight is 1
        q = lin(p + "/attention/linear_0", ln(x, p + "/attention/layer_norm")).reshape(HEADS, d)
        kv = states @ w[p + "/attention/linear_1/weight"].T + w[p + "/attention/linear_1/bias"]
        k = kv[:, :WIDTH].reshape(-1, HEADS, d).transpose(1, 0, 2)
        val = kv[:, WIDTH:].reshape(-1, HEADS, d).transpose(1, 0, 2)
        s = np.einsum("hd,htd->ht", q, k) / np.sqrt(d)
        s = np.exp(s - s.max(1, keepdims=True))
        s /= s.sum(1, keepdims=True)
        x = x + lin(p + "/attention/linear_2", np.einsum("ht,htd->hd", s, val).reshape(WIDTH))
        h = lin(p + "/ffn/linear_0", ln(x, p + "/ffn/layer_norm"))
        x = x + lin(p + "/ffn/linear_1", 0.5 * h * (1 + erf(h / np.sqrt(2))))
    x = ln(x, "decoder/layer_norm")
    return w["decoder/embeddings/weight"][FIRST_LANGUAGE_TOKEN:][:len(LANGUAGE_CODES)] @ x


@pytest.fixture(scope="module")
def step():
    variables = tiny_decoder()
    return variables, build_language_identifier(language_weights(variables), HEADS)


def test_the_keras_step_equals_whispers_decoder_on_its_first_token(step):
    variables, model = step
    states = np.random.default_rng(1).standard_normal((3, 20, WIDTH)).astype(np.float32)
    got = np.asarray(model([states, np.ones((3, 20), np.float32)]))
    assert got.shape == (3, len(LANGUAGE_CODES))
    for row, want in zip(got, (reference_logits(variables, s) for s in states)):
        np.testing.assert_allclose(row, want, atol=2e-4, rtol=1e-4)
    assert np.ptp(got[:, 0]) > 1e-3  # the scores depend on the audio


def test_masked_frames_are_not_heard(step):
    variables, model = step
    rng = np.random.default_rng(2)
    states = rng.standard_normal((1, 12, WIDTH)).astype(np.float32)
    padded = np.concatenate([states, 50 * rng.standard_normal((1, 8, WIDTH))], axis=1)
    valid = np.concatenate([np.ones((1, 12)), np.zeros((1, 8))], axis=1).astype(np.float32)
    alone = np.asarray(model([states, np.ones((1, 12), np.float32)]))
    masked = np.asarray(model([padded.astype(np.float32), valid]))
    np.testing.assert_allclose(masked, alone, atol=1e-5)
    np.testing.assert_allclose(masked[0], reference_logits(variables, states[0]), atol=2e-4,
                               rtol=1e-4)


def test_the_language_codes_are_whispers_99_in_token_order():
    assert len(LANGUAGE_CODES) == 99 == len(set(LANGUAGE_CODES))
    assert LANGUAGE_CODES[:3] == ("en", "zh", "de") and LANGUAGE_CODES[-1] == "su"
    assert {"fr", "it"} <= set(LANGUAGE_CODES)
