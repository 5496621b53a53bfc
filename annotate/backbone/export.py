"""Convert a backbone's Keras encoder to LiteRT (needs TensorFlow; build time only)."""

from __future__ import annotations

import numpy as np

#: Segments per encoder call: one, so that a segment's features depend on the
#: segment alone (XNNPACK computes a row differently by its place in a block).
#: It costs nothing: a 3 s segment is already 150 rows for every matrix
#: product (measured: 25 ms a segment at 1 and at 8).
BATCH = 1


def convert_encoder(weights: dict[str, np.ndarray], n_layers: int, n_mels: int,
                    quantize: bool, float16: bool = False) -> bytes:
    """The pooled encoder as a ``.tflite`` flatbuffer with input [BATCH, frames, n_mels].

    Args:
        weights: Encoder variables by CTranslate2 name.
        n_layers: Transformer blocks to keep; the output ``pooled`` pools
            hidden states 0..n_layers, the output ``frames`` is hidden state
            n_layers frame by frame (what :func:`convert_language_path` reads).
        n_mels: Mel bands.
        quantize: Dynamic-range int8 weights (activations stay float32).
        float16: Float16 weights (the published precision: no loss), computed in float32.

    The input's frame count is left free: a run resizes it to its window.
    """
    import tensorflow as tf

    from annotate.backbone.whisper_encoder import build_encoder

    model = build_encoder(weights, n_layers=n_layers, pooled_layers=tuple(range(n_layers + 1)),
                          with_frames=True)

    @tf.function(input_signature=[tf.TensorSpec((BATCH, None, n_mels), tf.float32),
                                  tf.TensorSpec((BATCH, None), tf.float32)])
    def pooled(log_mel, valid):
        out, frames = model([log_mel, valid], training=False)
        return {"pooled": out, "frames": frames}

    return _convert(tf, pooled, model, quantize, float16)


def convert_language_path(encoder_weights: dict[str, np.ndarray],
                          decoder_weights: dict[str, np.ndarray], first_block: int,
                          float16: bool = False, quantize: bool = False) -> bytes:
    """Whisper's language identification after block ``first_block``, as a ``.tflite``.

    Inputs ``frames`` [BATCH, frames // 2, width] (``convert_encoder``'s
    output) and ``valid`` [BATCH, frames]; output ``logits`` [BATCH, 99].
    """
    import tensorflow as tf

    from annotate.backbone.whisper_encoder import EncoderShape
    from annotate.backbone.whisper_language import build_language_path

    model = build_language_path(encoder_weights, decoder_weights, first_block)
    width = EncoderShape.of(encoder_weights).width

    @tf.function(input_signature=[tf.TensorSpec((BATCH, None, width), tf.float32),
                                  tf.TensorSpec((BATCH, None), tf.float32)])
    def logits(frames, valid):
        return {"logits": model([frames, valid], training=False)}

    return _convert(tf, logits, model, quantize, float16)


def _convert(tf, function, model, quantize: bool, float16: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()
