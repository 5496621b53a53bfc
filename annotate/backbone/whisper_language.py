"""Whisper's own language identification in Keras: the decoder's first step.

Whisper names a recording's language by the first token it would write
after the start-of-transcript token. The decoder reads that one token at
position 0, attends to the encoder's output, and its logits over the
language tokens are the language scores (OpenAI's ``detect_language``,
CTranslate2's ``Whisper.detect_language``). With a single token,
self-attention has a single key whose softmax weight is 1: each block's
self-attention is the value and output projections of the token alone, and
the first block's input is a constant.

``annotate run`` uses it when the candidate languages go beyond what the
language head knows (``--languages``: any of Whisper's 99 codes), or when
asked to (``--language-id whisper``); by default the head on the encoder's
states labels en/de/fr/it, as good at a fraction of the cost
(``docs/accuracy.md``). At run time it is the backbone folder's
``language.tflite`` (:func:`build_language_path`, exported by
``annotate.backbone.export``); ``benchmarks/parity.py`` checks it against
CTranslate2 on the published weights.

TensorFlow is imported by the caller's loader; this module only needs Keras.
"""

from __future__ import annotations

import math

import numpy as np

from annotate.backbone.whisper_encoder import LAYER_NORM_EPSILON, _gelu, _keras_layer_base
from annotate.labels import WHISPER_LANGUAGES

#: Whisper's language tokens in token order: code i is token FIRST_LANGUAGE_TOKEN + i.
LANGUAGE_CODES: tuple[str, ...] = WHISPER_LANGUAGES
#: ``<|startoftranscript|>`` in Whisper's multilingual vocabulary.
START_OF_TRANSCRIPT = 50258
#: ``<|en|>``, the first language token.
FIRST_LANGUAGE_TOKEN = 50259


def language_weights(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The decoder variables (CTranslate2 names) the first step reads, as float32.

    Two are derived: ``decoder/start`` (the start-of-transcript embedding
    plus position 0) and ``decoder/languages`` (the language tokens' output
    embeddings, rows of the tied embedding matrix). Self-attention keeps
    only its value and output projections.
    """
    f = {k: np.asarray(v, np.float32) for k, v in variables.items()
         if k.startswith("decoder/") and getattr(v, "dtype", np.dtype("O")).kind == "f"}
    embeddings = f["decoder/embeddings/weight"]
    width = embeddings.shape[1]
    out = {
        "decoder/start": embeddings[START_OF_TRANSCRIPT]
        + f["decoder/position_encodings/encodings"][0],
        "decoder/languages": embeddings[FIRST_LANGUAGE_TOKEN:
                                        FIRST_LANGUAGE_TOKEN + len(LANGUAGE_CODES)].copy(),
        "decoder/layer_norm/gamma": f["decoder/layer_norm/gamma"],
        "decoder/layer_norm/beta": f["decoder/layer_norm/beta"],
    }
    n_layers = 1 + max(int(k.split("/")[1][len("layer_"):]) for k in f
                       if k.startswith("decoder/layer_") and k.split("/")[1][6:].isdigit())
    for i in range(n_layers):
        p = f"decoder/layer_{i}"
        for name in ("self_attention/layer_norm/gamma", "self_attention/layer_norm/beta",
                     "self_attention/linear_1/weight", "self_attention/linear_1/bias",
                     "attention/layer_norm/gamma", "attention/layer_norm/beta",
                     "attention/linear_0/weight", "attention/linear_0/bias",
                     "attention/linear_1/weight", "attention/linear_1/bias",
                     "attention/linear_2/weight", "attention/linear_2/bias",
                     "ffn/layer_norm/gamma", "ffn/layer_norm/beta",
                     "ffn/linear_0/weight", "ffn/linear_0/bias",
                     "ffn/linear_1/weight", "ffn/linear_1/bias"):
            out[f"{p}/{name}"] = f[f"{p}/{name}"]
        # The fused query-key-value projection: the value is its last third.
        out[f"{p}/self_attention/value/weight"] = f[f"{p}/self_attention/linear_0/weight"][2 * width:]
        out[f"{p}/self_attention/value/bias"] = f[f"{p}/self_attention/linear_0/bias"][2 * width:]
    return out


def build_language_identifier(weights: dict[str, np.ndarray], n_heads: int):
    """A Keras model of the first decoder step, from :func:`language_weights`.

    Returns:
        keras.Model with inputs ``states`` [shape=(batch, frames, width)]: the
        encoder's output (after its final layer norm), and ``valid``
        [shape=(batch, frames)]: 1 for a real frame; output: logits
        [shape=(batch, len(LANGUAGE_CODES))].
    """
    import keras

    width = int(weights["decoder/start"].shape[0])
    states = keras.Input((None, width), name="states")
    valid = keras.Input((None,), name="valid")
    logits = _LanguageStep(weights, n_heads, name="language_step")([states, valid])
    return keras.Model([states, valid], logits, name="whisper_language")


def build_language_path(encoder_weights: dict[str, np.ndarray],
                        decoder_weights: dict[str, np.ndarray], first_block: int):
    """Keras model from the frames after block ``first_block`` to the language logits.

    It runs the encoder's remaining blocks and final norm, then the decoder's
    first step: what the LiteRT export ``language.tflite`` holds.

    Args:
        encoder_weights: Encoder variables by CTranslate2 name.
        decoder_weights: Decoder variables by CTranslate2 name (all of them:
            :func:`language_weights` picks what the step reads).
        first_block: Blocks ``model.tflite`` ran (its ``frames`` output).

    Returns:
        keras.Model with inputs ``frames`` [shape=(batch, frames // 2, width)]
        and ``valid`` [shape=(batch, frames)]: 1 for a real log-mel frame;
        output: logits [shape=(batch, len(LANGUAGE_CODES))].
    """
    import keras

    from annotate.backbone.whisper_encoder import EncoderShape, _Subsample, encoder_tail

    shape = EncoderShape.of(encoder_weights)
    frames = keras.Input((None, shape.width), name="frames")
    valid = keras.Input((None,), name="valid")
    frame_valid = _Subsample(name="encoder_valid")(valid)
    states = encoder_tail(frames, frame_valid, encoder_weights, first_block)
    step = _LanguageStep(language_weights(decoder_weights), shape.n_heads, name="language_step")
    return keras.Model([frames, valid], step([states, frame_valid]), name="whisper_language_path")


def _norm(x, gamma, beta):
    from keras import ops

    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * ops.rsqrt(var + LAYER_NORM_EPSILON) * gamma + beta


class _LanguageStep(_keras_layer_base()):
    def __init__(self, weights, n_heads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.w = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
        self.n_heads = n_heads
        self.n_layers = sum(1 for k in weights if k.endswith("/self_attention/value/bias"))

    def call(self, inputs):
        from keras import ops

        states, valid = inputs
        w = self.w
        batch, frames = ops.shape(states)[0], ops.shape(states)[1]
        width = w["decoder/start"].shape[0]
        head = width // self.n_heads
        x = ops.broadcast_to(ops.convert_to_tensor(w["decoder/start"]), (batch, width))
        masked = (1.0 - valid[:, None, :]) * -1e9  # (batch, 1, frames), over heads
        for i in range(self.n_layers):
            p = f"decoder/layer_{i}"

            def dense(h, name):
                return ops.matmul(h, w[f"{p}/{name}/weight"].T) + w[f"{p}/{name}/bias"]

            h = _norm(x, w[f"{p}/self_attention/layer_norm/gamma"],
                      w[f"{p}/self_attention/layer_norm/beta"])
            x = x + dense(dense(h, "self_attention/value"), "self_attention/linear_1")
            h = _norm(x, w[f"{p}/attention/layer_norm/gamma"], w[f"{p}/attention/layer_norm/beta"])
            q = ops.reshape(dense(h, "attention/linear_0"), (batch, self.n_heads, 1, head))
            kv = dense(states, "attention/linear_1")  # (batch, frames, 2 * width)
            k = ops.transpose(ops.reshape(kv[..., :width], (batch, frames, self.n_heads, head)),
                              (0, 2, 1, 3))
            v = ops.transpose(ops.reshape(kv[..., width:], (batch, frames, self.n_heads, head)),
                              (0, 2, 1, 3))
            scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(head)
            scores = scores + masked[:, None, :, :]
            attended = ops.reshape(ops.matmul(ops.softmax(scores, axis=-1), v), (batch, width))
            x = x + dense(attended, "attention/linear_2")
            h = _norm(x, w[f"{p}/ffn/layer_norm/gamma"], w[f"{p}/ffn/layer_norm/beta"])
            x = x + dense(_gelu(dense(h, "ffn/linear_0")), "ffn/linear_1")
        x = _norm(x, w["decoder/layer_norm/gamma"], w["decoder/layer_norm/beta"])
        return ops.matmul(x, w["decoder/languages"].T)
