"""Keras networks from log-mel segments to logits.

Every builder takes ``(features, n_labels, options)`` and returns an
uncompiled ``keras.Model`` with input ``(n_frames, n_mels)`` and one logit
per label (no softmax: inference divides by the calibration temperature
first). Only standard Keras layers are used, so that the saved model loads
in safe mode.
"""

from __future__ import annotations

from collections.abc import Callable

from annotate.errors import UsageError, expected_one_of
from annotate.features import FeatureParams

#: Default options of each architecture; ``options`` passed in override them.
DEFAULT_OPTIONS: dict[str, dict] = {
    "cnn": {
        "filters": [16, 32, 64, 128],
        "dropout": 0.3,
        "batch_norm_momentum": 0.9,
    },
    "crnn": {
        "filters": [16, 32, 64],
        "gru_units": 64,
        "dropout": 0.3,
        "batch_norm_momentum": 0.9,
    },
}

ARCHITECTURES: tuple[str, ...] = tuple(DEFAULT_OPTIONS)


def network_options(architecture: str, options: dict | None = None) -> dict:
    """The defaults of ``architecture`` updated with ``options``, checked.

    Raises:
        UsageError: Unknown architecture or option name.
    """
    if architecture not in DEFAULT_OPTIONS:
        raise UsageError(expected_one_of("architecture", architecture, ARCHITECTURES))
    merged = dict(DEFAULT_OPTIONS[architecture])
    for key, value in (options or {}).items():
        if key not in merged:
            raise UsageError(expected_one_of(f"{architecture} option", key, merged))
        merged[key] = list(value) if isinstance(value, tuple) else value
    return merged


def build_network(
    architecture: str, features: FeatureParams, n_labels: int, options: dict | None = None
):
    """Build the named network.

    Args:
        architecture: One of :data:`ARCHITECTURES`.
        features: Gives the input shape ``(features.n_frames, features.n_mels)``.
        n_labels: Number of logits.
        options: Overrides of :data:`DEFAULT_OPTIONS` for this architecture.

    Returns:
        keras.Model: input [shape=(batch, n_frames, n_mels)], output
        [shape=(batch, n_labels)] logits.
    """
    builders: dict[str, Callable] = {"cnn": cnn, "crnn": crnn}
    merged = network_options(architecture, options)
    return builders[architecture](features, n_labels, merged)


def _conv_block(layers, x, filters: int, pool: tuple[int, int], momentum: float, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.MaxPooling2D(pool, padding="same", name=f"{name}_pool")(x)


def cnn(features: FeatureParams, n_labels: int, options: dict | None = None):
    """The seed architecture: conv blocks, global pooling, dropout, dense.

    Each block is Conv2D (3x3) + BatchNorm + ReLU + 2x2 max pooling over
    (time, mel); average and max pooling over the whole map are concatenated
    so that both a steady colouring and short events count.

    With the default options (16-32-64-128 filters) it has about 100 k
    parameters (about 0.5 MB saved).
    """
    from annotate.inference import tensorflow

    keras = tensorflow().keras
    layers = keras.layers
    options = network_options("cnn", options)
    inputs = keras.Input((features.n_frames, features.n_mels), name="log_mel")
    x = layers.Reshape((features.n_frames, features.n_mels, 1), name="add_channel")(inputs)
    for i, filters in enumerate(options["filters"]):
        x = _conv_block(layers, x, int(filters), (2, 2), options["batch_norm_momentum"], f"b{i}")
    x = layers.Concatenate(name="pool")(
        [layers.GlobalAveragePooling2D(name="mean")(x), layers.GlobalMaxPooling2D(name="max")(x)]
    )
    x = layers.Dropout(options["dropout"], name="dropout")(x)
    outputs = layers.Dense(n_labels, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn")


def crnn(features: FeatureParams, n_labels: int, options: dict | None = None):
    """Conv blocks, then a bidirectional GRU over time, pooling and dense.

    The first two blocks pool time and mel by 2, later blocks only the mel
    axis, so the GRU steps every 40 ms (at a 10 ms hop) and can follow the
    prosody over the segment.

    With the default options it has about 250 k parameters (about 1 MB saved).
    """
    from annotate.inference import tensorflow

    keras = tensorflow().keras
    layers = keras.layers
    options = network_options("crnn", options)
    inputs = keras.Input((features.n_frames, features.n_mels), name="log_mel")
    x = layers.Reshape((features.n_frames, features.n_mels, 1), name="add_channel")(inputs)
    for i, filters in enumerate(options["filters"]):
        pool = (2, 2) if i < 2 else (1, 2)
        x = _conv_block(layers, x, int(filters), pool, options["batch_norm_momentum"], f"b{i}")
    _, frames, bands, channels = x.shape
    x = layers.Reshape((frames, bands * channels), name="to_sequence")(x)
    x = layers.Bidirectional(
        layers.GRU(int(options["gru_units"]), return_sequences=True), name="bigru"
    )(x)
    x = layers.Concatenate(name="pool")(
        [layers.GlobalAveragePooling1D(name="mean")(x), layers.GlobalMaxPooling1D(name="max")(x)]
    )
    x = layers.Dropout(options["dropout"], name="dropout")(x)
    outputs = layers.Dense(n_labels, name="logits")(x)
    return keras.Model(inputs, outputs, name="crnn")
