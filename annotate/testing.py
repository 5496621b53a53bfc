"""Tiny models and signals for tests and examples (no real weights needed).

``create_model_folder`` writes a complete model folder in the real format
with a small untrained (seeded) Keras network and its LiteRT export, so the
pipeline, resume and failure tests run in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from annotate.features import FeatureParams
from annotate.modelling.model_folder import ModelSpec, write_model_folder

#: Small features so that tiny test models stay fast.
TEST_FEATURES = FeatureParams(segment_s=1.0, n_mels=32, n_fft=512)


def create_model_folder(
    folder: str | Path,
    task: str,
    labels: list[str] | tuple[str, ...],
    languages: list[str] | tuple[str, ...] = ("*",),
    features: FeatureParams = TEST_FEATURES,
    name: str | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    litert: bool = True,
) -> ModelSpec:
    """Write a model folder holding a tiny randomly initialised CNN.

    The network is deterministic for a given seed and its logits depend on the
    input (a conv layer, pooling and a dense layer), so different signals get
    different, stable probabilities.

    Args:
        folder: Where to write it.
        task: ``language``, ``emotion`` or ``attitude``.
        labels: Output labels.
        languages: The model's ``languages``.
        features: Feature settings (small by default).
        name: The model's name (default: the folder's name).
        seed: Initialises the weights.
        temperature: Calibration temperature.
        litert: Also export ``model.tflite``, as ``annotate train`` does, so
            that runs use LiteRT (False: a folder only Keras can run).
    """
    from annotate.modelling.inference import tensorflow

    keras = tensorflow().keras
    keras.utils.set_random_seed(seed)
    model = build_tiny_network(features, len(labels))
    folder = Path(folder)
    spec = ModelSpec(
        folder=folder,
        name=name or folder.name,
        task=task,
        labels=tuple(labels),
        languages=tuple(languages),
        weights="model.keras",
        features=features,
        temperature=temperature,
        training={"data": "none: untrained test model", "seed": seed},
        metrics={},
    )
    card = f"# {spec.name}\n\nAn untrained model for tests. Do not use.\n"
    write_model_folder(spec, card)
    model.save(spec.weights_path)
    if litert:
        from annotate.modelling.litert_export import convert_to_litert

        spec = convert_to_litert(spec)
        write_model_folder(spec, card)
    return spec


def build_tiny_network(features: FeatureParams, n_outputs: int):
    """A few-thousand-parameter Keras CNN on (frames, n_mels) input, logits out."""
    from annotate.modelling.inference import tensorflow

    keras = tensorflow().keras
    layers = keras.layers
    inputs = keras.Input((features.n_frames, features.n_mels))
    x = layers.Reshape((features.n_frames, features.n_mels, 1))(inputs)
    x = layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(n_outputs, bias_initializer="random_normal")(x)
    return keras.Model(inputs, outputs)


def speech_like(duration_s: float, sampling_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A synthetic voice at a pitch of 120-160 Hz (by ``seed``) that the speech detectors call speech.

    :func:`voice` at a random pitch: syllables with vowel formants and
    consonant bursts, which Silero VAD hears as speech all along a long
    recording (a steady harmonic buzz it soon stops calling speech).

    Returns:
        np.ndarray [shape=(n,), dtype=float32] in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    return voice(duration_s, 120 + 40 * rng.random(), seed, sampling_rate)


def harmonic_buzz(duration_s: float, sampling_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal (``speech_like`` before Silero VAD).

    The energy gate calls it speech; Silero VAD, after a second or two, does
    not. The golden features of the shipped backbone were computed on it.

    Returns:
        np.ndarray [shape=(n,), dtype=float32] in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sampling_rate))
    t = np.arange(n) / sampling_rate
    f0 = 120 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * (3 + rng.random()) * t), 0, None) ** 2
    noise = 0.02 * rng.standard_normal(n)
    signal = 0.25 * voiced * syllables + noise
    return (signal / max(np.abs(signal).max(), 1e-9) * 0.5).astype(np.float32)


def tone(duration_s: float, freq_hz: float = 440.0, sampling_rate: int = 16000) -> np.ndarray:
    """A steady sine at half scale (no speech)."""
    t = np.arange(int(round(duration_s * sampling_rate))) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


#: EmoDB emotion letter -> voice pitch of fabricated recordings, in Hz.
TOY_PITCH_HZ = {"W": 260.0, "N": 150.0, "T": 90.0, "F": 200.0}


#: Formants (F1, F2, F3 in Hz) of the vowels a, e, o, i, the synthetic voice's syllables in turn.
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (570, 840, 2410), (300, 2200, 2950))


def voice(duration_s: float, f0_hz: float, seed: int, sampling_rate: int = 16000,
          vibrato: bool = True) -> np.ndarray:
    """A synthetic voice at pitch ``f0_hz`` that the speech detectors call speech.

    Syllables of random length and loudness, each a harmonic source shaped by
    the formants of a vowel (:data:`VOWELS` in turn), with a short noise burst (a consonant)
    and a pause between them: a steady harmonic buzz is not speech to Silero
    VAD, whose model has heard real voices. Each syllable's pitch glides a
    few per cent around ``f0_hz``; ``vibrato`` adds a slow 5 % wobble.

    Returns:
        np.ndarray [shape=(n,), dtype=float32] peaking at 0.5.
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sampling_rate))
    f0 = np.full(n, float(f0_hz))
    envelope, consonants, shaped = np.zeros(n), np.zeros(n), np.zeros(n)
    syllables = []
    i = 0
    while i < n:
        gap = int(rng.uniform(0.03, 0.12) * sampling_rate)
        burst = int(rng.uniform(0.03, 0.08) * sampling_rate)
        consonants[i + gap : i + gap + burst] = rng.uniform(0.05, 0.3)
        i += gap + burst
        if i >= n:
            break
        span = slice(i, min(i + int(rng.uniform(0.12, 0.3) * sampling_rate), n))
        m = span.stop - span.start
        f0[span] = np.linspace(f0_hz * rng.uniform(0.98, 1.04), f0_hz * rng.uniform(0.95, 1.01), m)
        envelope[span] = np.sin(np.pi * np.arange(m) / m) ** 0.7 * rng.uniform(0.5, 1.0)
        syllables.append((span, *VOWELS[len(syllables) % len(VOWELS)]))
        i = span.stop
    if vibrato:
        f0 *= 1 + 0.05 * np.sin(2 * np.pi * 0.7 * np.arange(n) / sampling_rate + 6 * rng.random())
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    source = sum(np.sin(k * phase) / k for k in range(1, 40) if k * f0_hz < 7500)

    def formant(x, hz, bandwidth_hz):
        r = np.exp(-np.pi * bandwidth_hz / sampling_rate)
        return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * hz / sampling_rate), r * r], x)

    tract = f0_hz / 150.0  # higher voices, shorter vocal tracts: higher formants
    for span, f1, f2, f3 in syllables:
        x = source[span]
        f1, f2, f3 = f1 * tract, f2 * tract, min(f3 * tract, 0.45 * sampling_rate)
        shaped[span] = formant(x, f1, 90) + 0.7 * formant(x, f2, 110) + 0.3 * formant(x, f3, 150)
    shaped /= max(np.abs(shaped).max(), 1e-9)
    # The fundamental and its first harmonics stay strong, so that pitch shows in log-mel.
    low = sum(np.sin(k * phase) / k for k in range(1, 4))
    shaped = 0.35 * shaped + 0.65 * low / max(np.abs(low).max(), 1e-9)
    signal = (0.4 * shaped * envelope + 0.5 * consonants * rng.standard_normal(n)
              + 0.005 * rng.standard_normal(n))
    return (signal / max(np.abs(signal).max(), 1e-9) * 0.5).astype(np.float32)


def make_toy_emodb(
    root: str | Path,
    speakers: tuple[str, ...] = ("03", "08", "09", "10"),
    emotions: str = "WNT",
    per_emotion: int = 3,
    first_seed: int = 0,
) -> Path:
    """Write an EmoDB-like ``wav/03a01Wa.wav`` tree whose emotions differ by voice pitch.

    Recordings last 1.2 s, 1.5 s, 1.8 s, ... (one per repetition); each
    speaker's pitch is shifted a little so that speakers differ.
    """
    import soundfile as sf

    root = Path(root)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    seed = first_seed
    for speaker in speakers:
        for letter in emotions:
            for k in range(per_emotion):
                seed += 1
                pitch = TOY_PITCH_HZ.get(letter, 200.0) * (1 + 0.03 * (int(speaker) % 3))
                sf.write(root / "wav" / f"{speaker}a0{k + 1}{letter}a.wav",
                         voice(1.2 + 0.3 * k, pitch, seed), 16000)
    return root


#: A tiny Whisper-shaped encoder for tests: 16 mel bands, width 32, 2 blocks, 2 heads.
TINY_BACKBONE_FEATURES = FeatureParams(
    sampling_rate=16000, segment_s=1.0, window_s=0.025, hop_s=0.010, n_fft=400, n_mels=16,
    fmin_hz=0.0, fmax_hz=8000.0, normalisation="whisper",
)


def tiny_encoder_weights(n_mels: int = 16, width: int = 32, n_layers: int = 2, n_heads: int = 2,
                         max_frames: int = 1500, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float16 variables named and shaped as in a CTranslate2 Whisper encoder."""
    rng = np.random.default_rng(seed)

    def f16(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    position = np.arange(max_frames)[:, None] / (10000 ** (np.arange(width // 2) / (width // 2)))
    weights = {
        "encoder/conv1/weight": f16(width, n_mels, 3), "encoder/conv1/bias": f16(width),
        "encoder/conv2/weight": f16(width, width, 3, scale=0.1), "encoder/conv2/bias": f16(width),
        "encoder/position_encodings/encodings": np.concatenate(
            [np.sin(position), np.cos(position)], axis=1).astype(np.float16),
        "encoder/layer_norm/gamma": np.ones(width, np.float16),
        "encoder/layer_norm/beta": np.zeros(width, np.float16),
        "encoder/num_heads": np.array(n_heads, np.int16),
    }
    for i in range(n_layers):
        p = f"encoder/layer_{i}"
        for part in ("self_attention", "ffn"):
            weights[f"{p}/{part}/layer_norm/gamma"] = np.ones(width, np.float16)
            weights[f"{p}/{part}/layer_norm/beta"] = np.zeros(width, np.float16)
        weights[f"{p}/self_attention/linear_0/weight"] = f16(3 * width, width)
        weights[f"{p}/self_attention/linear_0/bias"] = f16(3 * width)
        weights[f"{p}/self_attention/linear_1/weight"] = f16(width, width)
        weights[f"{p}/self_attention/linear_1/bias"] = f16(width)
        weights[f"{p}/ffn/linear_0/weight"] = f16(4 * width, width)
        weights[f"{p}/ffn/linear_0/bias"] = f16(4 * width)
        weights[f"{p}/ffn/linear_1/weight"] = f16(width, 4 * width)
        weights[f"{p}/ffn/linear_1/bias"] = f16(width)
    return weights


def tiny_decoder_weights(width: int = 32, n_layers: int = 2, n_heads: int = 2,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Random float16 decoder variables with CTranslate2's names and shapes.

    The vocabulary stops a little after Whisper's language tokens.
    """
    from annotate.backbone.whisper_language import FIRST_LANGUAGE_TOKEN, LANGUAGE_CODES

    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.3):
        return (scale * rng.standard_normal(shape)).astype(np.float16)

    vocabulary = FIRST_LANGUAGE_TOKEN + len(LANGUAGE_CODES) + 10
    v = {"decoder/embeddings/weight": r(vocabulary, width),
         "decoder/position_encodings/encodings": r(448, width),
         "decoder/layer_norm/gamma": 1 + r(width), "decoder/layer_norm/beta": r(width),
         "decoder/num_heads": np.int32(n_heads)}
    for i in range(n_layers):
        p = f"decoder/layer_{i}"
        for norm in ("self_attention", "attention", "ffn"):
            v[f"{p}/{norm}/layer_norm/gamma"] = 1 + r(width)
            v[f"{p}/{norm}/layer_norm/beta"] = r(width)
        for name, rows, cols in (("self_attention/linear_0", 3 * width, width),
                                 ("self_attention/linear_1", width, width),
                                 ("attention/linear_0", width, width),
                                 ("attention/linear_1", 2 * width, width),
                                 ("attention/linear_2", width, width),
                                 ("ffn/linear_0", 4 * width, width),
                                 ("ffn/linear_1", width, 4 * width)):
            v[f"{p}/{name}/weight"] = r(rows, cols)
            v[f"{p}/{name}/bias"] = r(rows, scale=0.1)
    return v


def create_backbone_folder(folder: str | Path, n_layers: int = 2, width: int = 32,
                           litert: bool = True, quantize: bool = False, seed: int = 0,
                           language: bool = False, litert_blocks: int | None = None):
    """Write a backbone folder holding a tiny random Whisper-shaped encoder (and its exports).

    Args:
        language: Add decoder weights and Whisper's language identification
            (``language.tflite`` when ``litert``).
        litert_blocks: Blocks in ``model.tflite`` (default: all).
    """
    from annotate.modelling.backbone_folder import (
        WEIGHTS_FILE,
        BackboneExport,
        BackboneSpec,
        LanguageExport,
        save_weights,
        write_backbone_folder,
    )
    from annotate.modelling.model_folder import file_sha256

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    features = TINY_BACKBONE_FEATURES
    weights = tiny_encoder_weights(features.n_mels, width, n_layers, seed=seed)
    decoder = tiny_decoder_weights(width, n_layers, seed=seed + 1) if language else {}
    save_weights(weights | decoder, folder / WEIGHTS_FILE)
    sha = file_sha256(folder / WEIGHTS_FILE)
    blocks = litert_blocks or n_layers
    export = language_export = None
    if litert:
        from annotate.backbone.export import BATCH, convert_encoder, convert_language_path

        blob = convert_encoder(weights, blocks, features.n_mels, quantize=quantize)
        (folder / "model.tflite").write_bytes(blob)
        export = BackboneExport("model.tflite", sha, blocks,
                                "dynamic-range-int8" if quantize else "float32", BATCH)
        if language:
            blob = convert_language_path(weights, decoder, blocks)
            (folder / "language.tflite").write_bytes(blob)
            language_export = LanguageExport("language.tflite", sha, "float32")
    spec = BackboneSpec(folder, folder.name, "whisper-encoder", features, width, n_layers,
                        {"model": "random weights for tests"}, export, language_export)
    write_backbone_folder(spec, f"# {spec.name}\n\nRandom weights for tests.\n", "none\n")
    return spec


def create_head_folder(folder: str | Path, task: str, labels, backbone, layers=(1, 2),
                       languages=("*",), name: str | None = None, seed: int = 0,
                       switch_probability: float | None = None, litert: bool = True,
                       cascade=None) -> ModelSpec:
    """Write a head model folder (untrained, seeded) reading ``backbone``'s hidden states.

    ``cascade``: a :class:`annotate.modelling.model_folder.LanguageCascade`
    for a language head.
    """
    from annotate.modelling.model_folder import BackboneInput
    from annotate.modelling.networks import build_head

    folder = Path(folder)
    source = BackboneInput(backbone.name, tuple(layers), "stats", backbone.pooled_width)
    size = source.input_size
    settings = {"hidden": 0, "dropout": 0.0, "l2": 0.0}
    model = build_head(size, len(labels), settings, np.zeros(size), np.ones(size), seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    spec = ModelSpec(folder=folder, name=name or folder.name, task=task, labels=tuple(labels),
                     languages=tuple(languages), weights="model.keras",
                     features=backbone.features, training={"data": "none: untrained"},
                     metrics={}, backbone=source, switch_probability=switch_probability,
                     cascade=cascade)
    card = f"# {spec.name}\n\nAn untrained head for tests. Do not use.\n"
    if litert:
        from annotate.modelling.litert_export import convert_to_litert

        spec = convert_to_litert(spec)
    write_model_folder(spec, card)
    return spec
