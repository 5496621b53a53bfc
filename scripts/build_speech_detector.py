"""Build the bundled speech detector folder, ``models/silero-vad``, from the package registry.

Run by ``make models`` (build time only: ``annotate run`` never touches the
network). The model is Silero VAD v6 (MIT licence), in the streaming-sequence
export ``silero_vad_16k_sequence.onnx`` that the PyPI wheel ``silero-vad``
ships as package data. The wheel is downloaded without its dependencies (no
torch) and the file is checked against the pinned SHA-256. The run
(``annotate.prepare.silero``) computes the export's spectra and convolutions
for whole blocks of frames in NumPy and runs only its recurrent tail frame
after frame, so this script cuts the export in two with the ``onnx``
package (the ``models`` extra; build time only): ``encoder.npz``, the four
convolutions' weights, and ``recurrent.onnx``, the export's own nodes from
the LSTM's input on. The export stays in the folder, with its licence, a
``detector.json`` and a model card.

Usage: python scripts/build_speech_detector.py [--out models/silero-vad]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np

WHEEL = "silero-vad==6.2.3"
MEMBER = "silero_vad/data/silero_vad_16k_sequence.onnx"
LICENSE_MEMBER = "silero_vad-6.2.3.dist-info/licenses/LICENSE"
SHA256 = "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85"
FILE = "silero_vad_16k_sequence.onnx"
#: The export's tensor that the LSTM reads: the encoder's output, (frames, 1, 128).
CUT = "/Transpose_output_0"
#: The strides of the export's four encoder convolutions (kernel 3, padding 1).
STRIDES = [1, 2, 2, 1]

CARD = """# silero-vad: the speech detector of `annotate run`

**What it is.** Silero VAD v6 (Silero Team, MIT licence), the streaming-sequence
ONNX export `{file}` from the PyPI wheel `{wheel}` (SHA-256 `{sha}`): a
small convolutional and recurrent network that gives each 32 ms frame of
16 kHz audio a probability of speech. It is trained by its authors on speech
and noise in over 100 languages; its published ROC-AUC on a multi-domain set
is 0.96, against WebRTC VAD's 0.73.

**How it is computed.** Only the LSTM carries anything from frame to frame,
so the run computes the export's spectra (a real FFT where the export has a
256-tap convolution) and its four convolutions (`encoder.npz`, their
weights) for a block of frames at once in NumPy, and runs the export's
recurrent tail (`recurrent.onnx`, its own nodes from the LSTM on) on ONNX
Runtime, one thread. Both are cut from the export by
`scripts/build_speech_detector.py`; they give its probabilities within 1e-4
(tested), in 30 % of its time.

**How the run uses it.** Each chunk of a recording (up to 120 s) is scored as
one stream, with 0.5 s of the audio before the chunk as warm-up, so that the
model hears each segment with its context. A segment's `speech_s` is the
seconds of its frames above the threshold (default 0.5), `speech_p` its
highest frame probability, and `speech` is true when `speech_s` reaches
0.25 s. Speech segments go on to the encoder, and so do the segments it is
unsure of (a frame at 0.15 or above), for the speech head on the encoder's
states to decide (`models/speech-head`).

**Measured** (docs/accuracy.md): on ESC-10 clips (folds 1-3) and game-music
excerpts that no model here was trained on, and on RAVDESS, EmoDB, EMOVO,
Common Voice and speechocean762 speakers; thresholds were chosen on
validation folds, speakers and tracks.

**Limits.** Human sounds that are not speech (sneezes, a baby crying) are
its most frequent false alarms; shouted, screamed speech its most frequent
misses. Singing counts as speech.

**Licence.** MIT; the licence text is `LICENSE` in this folder.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models/silero-vad")
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary", ":all:", "--dest", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("silero_vad-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            model = archive.read(MEMBER)
            licence = archive.read(LICENSE_MEMBER)
    digest = hashlib.sha256(model).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{WHEEL}:{MEMBER} has SHA-256 {digest}, expected {SHA256}")
    encoder, recurrent = split(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / FILE).write_bytes(model)
    (out / "encoder.npz").write_bytes(encoder)
    (out / "recurrent.onnx").write_bytes(recurrent)
    (out / "LICENSE").write_bytes(licence)
    (out / "detector.json").write_text(json.dumps({
        "name": "silero-vad",
        "file": FILE,
        "sha256": SHA256,
        "encoder": "encoder.npz",
        "encoder_sha256": hashlib.sha256(encoder).hexdigest(),
        "encoder_strides": STRIDES,
        "recurrent": "recurrent.onnx",
        "recurrent_sha256": hashlib.sha256(recurrent).hexdigest(),
        "source": f"PyPI wheel {WHEEL}, {MEMBER}",
        "licence": "MIT",
        "sampling_rate": 16000,
        "frame_samples": 512,
        "context_samples": 64,
    }, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(CARD.format(file=FILE, wheel=WHEEL, sha=SHA256))
    print(f"wrote {out}")


def split(model: bytes) -> tuple[bytes, bytes]:
    """The export's encoder weights (an ``.npz``) and its recurrent tail (an ONNX model)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load_from_string(model).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convolutions = [n for n in graph.node if n.op_type == "Conv" and "encoder" in n.name]
    for node, stride in zip(convolutions, STRIDES, strict=True):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (attributes["kernel_shape"], attributes["pads"], attributes["strides"]) != (
                [3], [1, 1], [stride]):
            raise SystemExit(f"{node.name} is not the convolution this build expects")
    names = [f"encoder.{i}.{part}" for i in range(len(STRIDES)) for part in ("weight", "bias")]
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # np.savez's layout, without its timestamps
        for name in names:
            member = BytesIO()
            np.lib.format.write_array(member, weights[name], allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                             member.getvalue())

    first = next(i for i, n in enumerate(graph.node) if CUT in n.input)
    tail = list(graph.node[first:])
    for node in tail:
        node.input[:] = ["features" if name == CUT else name for name in node.input]
    used = {name for node in tail for name in node.input}
    inputs = [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT,
                                            ["sequence_length", 1, 128])]
    inputs += [i for i in graph.input if i.name in used]
    recurrent = helper.make_model(
        helper.make_graph(tail, "silero_vad_recurrent", inputs, list(graph.output),
                          [t for t in graph.initializer if t.name in used]),
        opset_imports=onnx.load_from_string(model).opset_import)
    onnx.checker.check_model(recurrent)
    return buffer.getvalue(), recurrent.SerializeToString()


if __name__ == "__main__":
    main()
