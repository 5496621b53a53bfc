"""Whisper's audio encoder in Keras, built from the weights of a backbone folder.

Two convolutions (the second with stride 2: 100 log-mel frames a second
become 50 encoder frames), sinusoidal positions, pre-norm transformer
blocks, a final layer norm: OpenAI's ``AudioEncoder``, and CTranslate2's
``WhisperEncoder`` that the weights come from. Beyond the original it takes
a mask of valid frames, so that segments shorter than the batch's length
give, on their real frames, what they would give alone: the first
convolution's output is zeroed past the end (as the second's zero padding
would see it), attention ignores masked keys, and pooling counts only valid
frames.

TensorFlow is imported by the caller's loader; this module only needs Keras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: LayerNorm epsilon of OpenAI's Whisper (PyTorch's default).
LAYER_NORM_EPSILON = 1e-5


@dataclass(frozen=True)
class EncoderShape:
    """The sizes of a Whisper encoder, read off its weights."""

    n_mels: int
    width: int
    n_heads: int
    n_layers: int
    max_frames: int

    @classmethod
    def of(cls, weights: dict[str, np.ndarray]) -> EncoderShape:
        n_layers = 1 + max(int(k.split("/")[1][len("layer_"):]) for k in weights
                           if k.startswith("encoder/layer_") and k.split("/")[1][6:].isdigit())
        width, n_mels, _ = weights["encoder/conv1/weight"].shape
        return cls(int(n_mels), int(width), int(weights["encoder/num_heads"]), n_layers,
                   int(weights["encoder/position_encodings/encodings"].shape[0]))


def build_encoder(weights: dict[str, np.ndarray], n_layers: int | None = None,
                  pooled_layers: tuple[int, ...] | None = None, with_frames: bool = False):
    """A Keras model of the encoder with ``weights`` (CTranslate2 names) loaded, in float32.

    Args:
        weights: Encoder variables by CTranslate2 name (``encoder/conv1/weight``, ...).
        n_layers: Keep only the first ``n_layers`` transformer blocks (default: all).
        pooled_layers: If given, the model outputs, for each listed hidden
            state (0: the input to the first block, i: the output of block i;
            the last block's output has the final layer norm applied), the
            mean and standard deviation over valid frames:
            [shape=(batch, len(pooled_layers), 2 * width)]. Otherwise it
            outputs the final hidden states [shape=(batch, frames // 2, width)].
        with_frames: With ``pooled_layers``, also output the hidden state
            after block ``n_layers`` frame by frame (without the final layer
            norm unless it is the last block): what
            :func:`annotate.backbone.whisper_language.build_language_path`
            continues from. The model then has two outputs, pooled first.

    Returns:
        keras.Model with inputs ``log_mel`` [shape=(batch, frames, n_mels)]
        and ``valid`` [shape=(batch, frames), float32: 1 for a real log-mel
        frame, 0 for padding after the end].
    """
    import keras
    from keras import ops

    shape = EncoderShape.of(weights)
    n_layers = shape.n_layers if n_layers is None else n_layers
    if not 1 <= n_layers <= shape.n_layers:
        raise ValueError(f"n_layers {n_layers}, expected 1..{shape.n_layers}")
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items() if v.dtype.kind == "f"}

    log_mel = keras.Input((None, shape.n_mels), name="log_mel")
    valid = keras.Input((None,), name="valid")
    x = _Convolutions(w, name="convolutions")([log_mel, valid])
    # Encoder frame j reads mel frames 2j-1..2j+1: real where mel frame 2j is.
    frame_valid = _Subsample(name="encoder_valid")(valid)
    x = _Positions(w["encoder/position_encodings/encodings"], name="positions")(x)
    hidden = [x]
    for i in range(n_layers):
        x = _Block(w, i, shape.n_heads, name=f"block_{i}")([x, frame_valid])
        hidden.append(x)
    if n_layers == shape.n_layers:
        hidden[-1] = _FinalNorm(w, name="final_norm")(hidden[-1])
    if pooled_layers is None:
        return keras.Model([log_mel, valid], hidden[-1], name="whisper_encoder")
    pooled = [_MaskedStats(name=f"stats_{i}")([hidden[i], frame_valid]) for i in pooled_layers]
    out = ops.stack(pooled, axis=1) if len(pooled) > 1 else ops.expand_dims(pooled[0], 1)
    if with_frames:
        return keras.Model([log_mel, valid], [out, hidden[-1]], name="whisper_encoder_pooled")
    return keras.Model([log_mel, valid], out, name="whisper_encoder_pooled")


def encoder_tail(x, frame_valid, weights: dict[str, np.ndarray], first_block: int):
    """Blocks ``first_block``.. of the encoder and its final layer norm, on Keras tensors.

    Args:
        x: Hidden states after block ``first_block`` [shape=(batch, frames, width)].
        frame_valid: 1 for a real encoder frame [shape=(batch, frames)].
        weights: Encoder variables by CTranslate2 name.
        first_block: Blocks already run (0: ``x`` is the positions' output).
    """
    shape = EncoderShape.of(weights)
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items() if v.dtype.kind == "f"}
    for i in range(first_block, shape.n_layers):
        x = _Block(w, i, shape.n_heads, name=f"block_{i}")([x, frame_valid])
    return _FinalNorm(w, name="final_norm")(x)


def _gelu(x):
    from keras import ops

    return 0.5 * x * (1.0 + ops.erf(x / math.sqrt(2.0)))


def _frozen(layer, name: str, value: np.ndarray) -> np.ndarray:
    # Constants, not variables: the encoder is never trained here, and the
    # LiteRT converter embeds constants as they are.
    return np.ascontiguousarray(value, dtype=np.float32)


def _keras_layer_base():
    import keras

    return keras.layers.Layer


class _Convolutions(_keras_layer_base()):
    def __init__(self, w, **kwargs) -> None:
        super().__init__(**kwargs)
        # CTranslate2 stores (out, in, kernel); Keras convolves with (kernel, in, out).
        self.k1 = _frozen(self, "conv1_kernel", w["encoder/conv1/weight"].transpose(2, 1, 0))
        self.b1 = _frozen(self, "conv1_bias", w["encoder/conv1/bias"])
        self.k2 = _frozen(self, "conv2_kernel", w["encoder/conv2/weight"].transpose(2, 1, 0))
        self.b2 = _frozen(self, "conv2_bias", w["encoder/conv2/bias"])

    def call(self, inputs):
        from keras import ops

        log_mel, valid = inputs
        x = ops.pad(log_mel, [[0, 0], [1, 1], [0, 0]])
        x = _gelu(ops.conv(x, self.k1, strides=1, padding="valid") + self.b1)
        # Zero the frames past the end, as conv2's padding would see them.
        x = x * ops.expand_dims(valid, -1)
        x = ops.pad(x, [[0, 0], [1, 1], [0, 0]])
        return _gelu(ops.conv(x, self.k2, strides=2, padding="valid") + self.b2)


def _layer_norm(x, gamma, beta):
    from keras import ops

    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * ops.rsqrt(var + LAYER_NORM_EPSILON) * gamma + beta


class _FinalNorm(_keras_layer_base()):
    def __init__(self, w, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gamma = _frozen(self, "gamma", w["encoder/layer_norm/gamma"])
        self.beta = _frozen(self, "beta", w["encoder/layer_norm/beta"])

    def call(self, x):
        return _layer_norm(x, self.gamma, self.beta)


class _Subsample(_keras_layer_base()):
    def call(self, valid):
        return valid[:, ::2]


class _Positions(_keras_layer_base()):
    def __init__(self, table, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = _frozen(self, "table", table)

    def call(self, x):
        from keras import ops

        table = ops.convert_to_tensor(self.table)
        return x + ops.expand_dims(ops.slice(table, (0, 0), (ops.shape(x)[1], self.table.shape[1])), 0)


class _Block(_keras_layer_base()):
    """One pre-norm transformer block: self-attention, then a GELU feed-forward net."""

    def __init__(self, w, index: int, n_heads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        p = f"encoder/layer_{index}"
        self.n_heads = n_heads
        width = w[f"{p}/self_attention/linear_1/weight"].shape[0]
        self.head_width = width // n_heads
        self.width = width
        names = {
            "attn_norm_g": f"{p}/self_attention/layer_norm/gamma",
            "attn_norm_b": f"{p}/self_attention/layer_norm/beta",
            "ffn_norm_g": f"{p}/ffn/layer_norm/gamma",
            "ffn_norm_b": f"{p}/ffn/layer_norm/beta",
            "qkv_b": f"{p}/self_attention/linear_0/bias",
            "out_b": f"{p}/self_attention/linear_1/bias",
            "ffn1_b": f"{p}/ffn/linear_0/bias",
            "ffn2_b": f"{p}/ffn/linear_1/bias",
        }
        for attr, key in names.items():
            setattr(self, attr, _frozen(self, attr, w[key]))
        # Dense kernels as (in, out): CTranslate2 stores (out, in).
        for attr, key in {"qkv_k": f"{p}/self_attention/linear_0/weight",
                          "out_k": f"{p}/self_attention/linear_1/weight",
                          "ffn1_k": f"{p}/ffn/linear_0/weight",
                          "ffn2_k": f"{p}/ffn/linear_1/weight"}.items():
            setattr(self, attr, _frozen(self, attr, np.ascontiguousarray(w[key].T)))

    def call(self, inputs):
        from keras import ops

        x, valid = inputs
        batch, frames = ops.shape(x)[0], ops.shape(x)[1]
        h = _layer_norm(x, self.attn_norm_g, self.attn_norm_b)
        qkv = ops.matmul(h, self.qkv_k) + self.qkv_b
        qkv = ops.reshape(qkv, (batch, frames, 3, self.n_heads, self.head_width))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, batch, heads, frames, head_width)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(self.head_width)
        # Masked keys get -1e9: exp underflows to exactly 0 beside any real score.
        scores = scores + (1.0 - valid[:, None, None, :]) * -1e9
        attended = ops.matmul(ops.softmax(scores, axis=-1), v)
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (batch, frames, self.width))
        x = x + ops.matmul(attended, self.out_k) + self.out_b
        h = _layer_norm(x, self.ffn_norm_g, self.ffn_norm_b)
        h = _gelu(ops.matmul(h, self.ffn1_k) + self.ffn1_b)
        return x + ops.matmul(h, self.ffn2_k) + self.ffn2_b


class _MaskedStats(_keras_layer_base()):
    """Mean and standard deviation over valid frames: [batch, 2 * width]."""

    def call(self, inputs):
        from keras import ops

        x, valid = inputs
        weights = ops.expand_dims(valid, -1)
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        mean = ops.sum(x * weights, axis=1) / count
        var = ops.sum(ops.square(x - ops.expand_dims(mean, 1)) * weights, axis=1) / count
        return ops.concatenate([mean, ops.sqrt(var + 1e-6)], axis=-1)
