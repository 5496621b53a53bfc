"""Build the bundled speech detector folder, ``models/silero-vad``, from the package registry.

Run by ``make models`` (build time only: ``annotate run`` never touches the
network). The model is Silero VAD v6 (MIT licence), in the streaming-sequence
export ``silero_vad_16k_sequence.onnx`` that the PyPI wheel ``silero-vad``
ships as package data: one call scores a whole stream of 32 ms frames, which
is what ``annotate.prepare.speech`` runs on ONNX Runtime. The wheel is
downloaded without its dependencies (no torch), the file is checked against
the pinned SHA-256 and written with its licence, a ``detector.json`` and a
model card.

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
from pathlib import Path

WHEEL = "silero-vad==6.2.3"
MEMBER = "silero_vad/data/silero_vad_16k_sequence.onnx"
LICENSE_MEMBER = "silero_vad-6.2.3.dist-info/licenses/LICENSE"
SHA256 = "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85"
FILE = "silero_vad_16k_sequence.onnx"

CARD = """# silero-vad: the speech detector of `annotate run`

**What it is.** Silero VAD v6 (Silero Team, MIT licence), the streaming-sequence
ONNX export `{file}` from the PyPI wheel `{wheel}` (SHA-256 `{sha}`), run on
ONNX Runtime: a small convolutional and recurrent network that gives each
32 ms frame of 16 kHz audio a probability of speech. It is trained by its
authors on speech and noise in over 100 languages; its published ROC-AUC on
a multi-domain set is 0.96, against WebRTC VAD's 0.73.

**How the run uses it.** Each chunk of a recording (up to 120 s) is scored as
one stream, with 0.5 s of the audio before the chunk as warm-up, so that the
model hears each segment with its context. A segment's `speech_s` is the
seconds of its frames above the threshold (default 0.5), `speech_p` its
highest frame probability, and `speech` is true when `speech_s` reaches
0.25 s. Only speech segments go on to the encoder.

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
    out.mkdir(parents=True, exist_ok=True)
    (out / FILE).write_bytes(model)
    (out / "LICENSE").write_bytes(licence)
    (out / "detector.json").write_text(json.dumps({
        "name": "silero-vad",
        "file": FILE,
        "sha256": SHA256,
        "source": f"PyPI wheel {WHEEL}, {MEMBER}",
        "licence": "MIT",
        "sampling_rate": 16000,
        "frame_samples": 512,
        "context_samples": 64,
    }, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(CARD.format(file=FILE, wheel=WHEEL, sha=SHA256))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
