"""Keras networks from log-mel segments to logits.

Every builder takes ``(features, n_labels, options)`` and returns an
uncompiled ``keras.Model`` with input ``(n_frames, n_mels)`` and one logit
per label (no softmax: inference divides by the calibration temperature
first). Only standard Keras layers are used, so that the saved model loads
in safe mode.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from annotate.errors import UsageError, expected_one_of
from annotate.features import FeatureParams

#: Default options of each architecture; ``options`` passed in override them.
DEFAULT_OPTIONS: dict[str, dict] = {
    "cnn": {
        "filters": [16, 32, 64, 128],
        "input_pool": [1, 1],
        "dropout": 0.3,
        "batch_norm_momentum": 0.9,
    },
    "crnn": {
        "filters": [16, 32, 64],
        "gru_units": 64,
        "dropout": 0.3,
        "batch_norm_momentum": 0.9,
    },
    "stats": {
        "n_cepstra": 20,
        "l2": 1e-2,
        "dropout": 0.2,
        "batch_norm_momentum": 0.9,
    },
    "cnn_stats": {
        "filters": [16, 32, 64, 128],
        "input_pool": [1, 1],
        "n_cepstra": 20,
        "l2": 1e-3,
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
    builders: dict[str, Callable] = {"cnn": cnn, "crnn": crnn, "stats": stats,
                                     "cnn_stats": cnn_stats}
    merged = network_options(architecture, options)
    return builders[architecture](features, n_labels, merged)


def _conv_block(layers, x, filters: int, pool: tuple[int, int], momentum: float, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.MaxPooling2D(pool, padding="same", name=f"{name}_pool")(x)


def _cnn_embedding(layers, x, options: dict):
    """Conv blocks over (time, mel), then mean and max over the whole map.

    ``input_pool`` (time, mel) averages the log-mel first: (2, 2) makes every
    convolution 4 times cheaper (20 ms frames, 32 bands).
    """
    x = layers.Reshape((x.shape[1], x.shape[2], 1), name="add_channel")(x)
    if tuple(options["input_pool"]) != (1, 1):
        x = layers.AveragePooling2D(tuple(options["input_pool"]), padding="same",
                                    name="input_pool")(x)
    for i, filters in enumerate(options["filters"]):
        x = _conv_block(layers, x, int(filters), (2, 2), options["batch_norm_momentum"], f"b{i}")
    return layers.Concatenate(name="pool")(
        [layers.GlobalAveragePooling2D(name="mean")(x), layers.GlobalMaxPooling2D(name="max")(x)]
    )


def _statistics(keras, x, n_mels: int, n_cepstra: int):
    """Utterance statistics of a log-mel segment, built from standard layers.

    The functionals that make openSMILE's feature sets work with a linear
    classifier, over three streams -- the log-mel bands, their cepstra (a
    fixed DCT-II: MFCCs) and the frame-to-frame deltas of the bands: mean,
    mean square, maximum and minimum of every coefficient over the segment.
    The segment normalisation has already removed each band's mean, so
    what is left is how the spectrum moves: its spread, extremes and speed.
    """
    layers = keras.layers
    dct = layers.Dense(n_cepstra, use_bias=False, trainable=False, name="dct")
    cepstra = dct(x)
    dct.set_weights([_dct_matrix(n_mels, n_cepstra)])
    later = layers.Cropping1D((1, 0), name="later")(x)
    earlier = layers.Cropping1D((0, 1), name="earlier")(x)
    delta = layers.Subtract(name="delta")([later, earlier])
    pooled = []
    for name, stream in (("mel", x), ("cep", cepstra), ("delta", delta)):
        square = layers.Multiply(name=f"{name}_sq")([stream, stream])
        negated = layers.Rescaling(-1.0, name=f"{name}_neg")(stream)
        pooled += [
            layers.GlobalAveragePooling1D(name=f"{name}_mean")(stream),
            layers.GlobalAveragePooling1D(name=f"{name}_meansq")(square),
            layers.GlobalMaxPooling1D(name=f"{name}_max")(stream),
            layers.GlobalMaxPooling1D(name=f"{name}_negmin")(negated),
        ]
    return layers.Concatenate(name="statistics")(pooled)


def _dct_matrix(n: int, k: int):
    """Orthonormal DCT-II basis as an (n, k) matrix: ``x @ M`` = the first k cepstra."""
    import numpy as np

    i = np.arange(n)[:, None]
    j = np.arange(k)[None, :]
    basis = np.cos(np.pi * (i + 0.5) * j / n) * np.sqrt(2.0 / n)
    basis[:, 0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def stats(features: FeatureParams, n_labels: int, options: dict | None = None):
    """A linear classifier on utterance statistics (an openSMILE-like baseline).

    Statistics of the log-mel bands, cepstra and deltas (see
    :func:`_statistics`), standardised by batch normalisation, dropout, then
    one L2-regularised dense layer: a regularised logistic regression that
    trains in seconds. On the held-out speakers of EmoDB it did better than
    the CNN (see docs/accuracy.md). About 4 k parameters.
    """
    from annotate.modelling.inference import tensorflow

    keras = tensorflow().keras
    layers = keras.layers
    options = network_options("stats", options)
    inputs = keras.Input((features.n_frames, features.n_mels), name="log_mel")
    x = _statistics(keras, inputs, features.n_mels, int(options["n_cepstra"]))
    x = layers.BatchNormalization(momentum=options["batch_norm_momentum"], name="standardise")(x)
    x = layers.Dropout(options["dropout"], name="dropout")(x)
    outputs = layers.Dense(n_labels, kernel_regularizer=keras.regularizers.L2(options["l2"]),
                           name="logits")(x)
    return keras.Model(inputs, outputs, name="stats")


def cnn_stats(features: FeatureParams, n_labels: int, options: dict | None = None):
    """The CNN with a second input branch: the utterance statistics of :func:`stats`.

    The CNN's pooled map and the standardised statistics are concatenated
    before the dropout and the (L2-regularised) dense layer, so the network
    can lean on the features that already work for emotion and learn what
    they miss.
    """
    from annotate.modelling.inference import tensorflow

    keras = tensorflow().keras
    layers = keras.layers
    options = network_options("cnn_stats", options)
    inputs = keras.Input((features.n_frames, features.n_mels), name="log_mel")
    embedding = _cnn_embedding(layers, inputs, options)
    statistics = _statistics(keras, inputs, features.n_mels, int(options["n_cepstra"]))
    statistics = layers.BatchNormalization(
        momentum=options["batch_norm_momentum"], name="standardise")(statistics)
    x = layers.Concatenate(name="branches")([embedding, statistics])
    x = layers.Dropout(options["dropout"], name="dropout")(x)
    outputs = layers.Dense(n_labels, kernel_regularizer=keras.regularizers.L2(options["l2"]),
                           name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn_stats")


def cnn(features: FeatureParams, n_labels: int, options: dict | None = None):
    """The seed architecture: conv blocks, global pooling, dropout, dense.

    Each block is Conv2D (3x3) + BatchNorm + ReLU + 2x2 max pooling over
    (time, mel); average and max pooling over the whole map are concatenated
    so that both a steady colouring and short events count.

    With the default options (16-32-64-128 filters) it has about 100 k
    parameters (about 0.5 MB saved).
    """
    from annotate.modelling.inference import tensorflow

    keras = tensorflow().keras
    layers = keras.layers
    options = network_options("cnn", options)
    inputs = keras.Input((features.n_frames, features.n_mels), name="log_mel")
    x = _cnn_embedding(layers, inputs, options)
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
    from annotate.modelling.inference import tensorflow

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


def build_head(input_size: int, n_labels: int, settings: dict, mean: np.ndarray,
               variance: np.ndarray, seed: int):
    """The head: standardise, dropout, optional GELU layer, logits (built-in layers only)."""
    from annotate.modelling.inference import tensorflow

    keras = tensorflow().keras
    keras.utils.set_random_seed(seed)
    regulariser = keras.regularizers.L2(settings["l2"])
    inputs = keras.Input((input_size,), name="backbone_states")
    x = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(inputs)
    x = keras.layers.Dropout(settings["dropout"], seed=seed, name="dropout_in")(x)
    if settings["hidden"]:
        x = keras.layers.Dense(settings["hidden"], activation="gelu",
                               kernel_regularizer=regulariser, name="hidden")(x)
        x = keras.layers.Dropout(settings["dropout"], seed=seed + 1, name="dropout_hidden")(x)
    logits = keras.layers.Dense(n_labels, kernel_regularizer=regulariser, name="logits")(x)
    return keras.Model(inputs, logits, name="head")
