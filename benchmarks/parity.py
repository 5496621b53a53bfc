"""The shipped backbone against CTranslate2 and faster-whisper, on the same input.

Checks, with the bench extra installed (``pip install '.[bench]'``):

1. features: ``annotate.features.whisper_log_mel`` against faster-whisper's
   ``FeatureExtractor`` (``padding=0``) on a fixed synthetic voice and on
   real clips when ``--corpora`` is given;
2. encoder: the Keras encoder built from ``models/whisper-base`` against
   CTranslate2's own ``encode`` (compute type float32), on the same
   features, for a 3 s segment and a full 30 s window;
3. export: the LiteRT export's pooled hidden states against Keras's;
4. language: the Keras encoder and decoder step
   (``annotate.backbone.whisper_language``, decoder weights read from the
   CTranslate2 file) against CTranslate2's ``detect_language``, the
   probabilities of all 99 languages, for the 3 s segment and the 30 s
   window; then the run's LiteRT path (``model.tflite`` and
   ``language.tflite``) on the 3 s segment.

``--write-golden`` records CTranslate2's outputs (encoder, and
``detect_language`` on the 3 s segment) and faster-whisper's features into
``tests/golden/whisper_base.npz``, which the test suite checks the shipped
model against (without CTranslate2). Run it only when the backbone changes
on purpose.

CTranslate2 reads the model folder it is given (``--ct2 DIR``: model.bin,
config.json, vocabulary.json), or one written from the installed wheels
(``annotate.backbone.published``).

Usage: python benchmarks/parity.py [--ct2 DIR] [--corpora ../shared/corpora] [--write-golden]
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annotate.backbone.whisper_encoder import build_encoder  # noqa: E402
from annotate.features import WHISPER_FEATURES, whisper_log_mel  # noqa: E402
from annotate.modelling.backbone_folder import read_backbone_folder  # noqa: E402
from annotate.testing import harmonic_buzz  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "whisper_base.npz"
#: Encoder frames kept in the golden file (every 5th of a 3 s segment's 150).
GOLDEN_FRAME_STEP = 5


def golden_signal() -> np.ndarray:
    """The fixed input: 3 s of a synthetic voice (annotate.testing.harmonic_buzz, seed 7)."""
    return harmonic_buzz(3.0, 16000, seed=7)


def ct2_folder(given: Path | None, work: Path) -> Path:
    if given is not None:
        return given
    from importlib import resources

    from annotate.backbone.published import PARTS, installed_model_bin

    folder = work / "ct2"
    folder.mkdir()
    (folder / "model.bin").write_bytes(installed_model_bin())
    data = resources.files(PARTS[1].split("/")[0]) / "data"
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        (folder / name).write_bytes((data / name).read_bytes())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct2", type=Path, help="a CTranslate2 Whisper base folder")
    parser.add_argument("--backbone", type=Path, default=ROOT / "models" / "whisper-base")
    parser.add_argument("--corpora", type=Path)
    parser.add_argument("--write-golden", action="store_true")
    args = parser.parse_args()

    import ctranslate2
    from faster_whisper.feature_extractor import FeatureExtractor

    work = Path(tempfile.mkdtemp(prefix="annotate-parity-"))
    ct2_dir = ct2_folder(args.ct2, work)
    ct = ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32", intra_threads=2)
    extractor = FeatureExtractor()
    spec = read_backbone_folder(args.backbone)
    from annotate.backbone.published import backbone_weights

    keras = build_encoder(backbone_weights(spec))

    def encode_ct2(mel: np.ndarray) -> np.ndarray:
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.T[None]))
        return np.array(ct.encode(view, to_cpu=True))[0]

    def encode_keras(mel: np.ndarray) -> np.ndarray:
        return np.asarray(keras([mel[None], np.ones((1, len(mel)), np.float32)]))[0]

    print("features: annotate vs faster-whisper FeatureExtractor(padding=0), max |difference|")
    signal = golden_signal()
    ours = whisper_log_mel(signal, WHISPER_FEATURES)
    theirs = extractor(signal, padding=0).T.astype(np.float32)
    print(f"  synthetic voice, 3 s: {np.abs(ours - theirs).max():.2e}")
    if args.corpora:
        import soundfile as sf

        for path in sorted(glob.glob(str(args.corpora / "emodb" / "wav" / "*")))[:20:5]:
            samples, _ = sf.read(path, dtype="float32")
            diff = np.abs(whisper_log_mel(samples) - extractor(samples, padding=0).T).max()
            print(f"  {Path(path).name}: {diff:.2e}")

    print("encoder: Keras (float32) vs CTranslate2 encode (float32), same features")
    want = encode_ct2(theirs)
    got = encode_keras(theirs)
    print(f"  3 s: max |difference| {np.abs(got - want).max():.2e}, "
          f"largest output {np.abs(want).max():.2f}")
    padded = np.zeros((3000, theirs.shape[1]), np.float32)
    padded[: len(theirs)] = theirs
    full = np.abs(encode_keras(padded) - encode_ct2(padded)).max()
    print(f"  30 s window: max |difference| {full:.2e}")

    print("language: Keras encoder + decoder step vs CTranslate2 detect_language (float32)")
    from annotate.backbone.ctranslate2_file import read_ctranslate2
    from annotate.backbone.whisper_language import (
        LANGUAGE_CODES,
        build_language_identifier,
        language_weights,
    )

    variables = read_ctranslate2(ct2_dir / "model.bin").variables
    identifier = build_language_identifier(language_weights(variables),
                                           int(variables["decoder/num_heads"]))
    detected = {}
    for name, mel in (("3 s", theirs), ("30 s window", padded)):
        states = encode_keras(mel)[None]
        logits = np.asarray(identifier([states, np.ones(states.shape[:2], np.float32)]))[0]
        ours_p = np.exp(logits - logits.max())
        ours_p /= ours_p.sum()
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.T[None]))
        theirs_p = dict(ct.detect_language(view)[0])
        want_p = np.array([theirs_p[f"<|{code}|>"] for code in LANGUAGE_CODES])
        detected[name] = want_p
        print(f"  {name}: max |probability difference| {np.abs(ours_p - want_p).max():.2e} "
              f"over {len(LANGUAGE_CODES)} languages; top: ours "
              f"{LANGUAGE_CODES[int(ours_p.argmax())]}, CTranslate2 "
              f"{LANGUAGE_CODES[int(want_p.argmax())]}")

    if spec.litert is not None:
        from annotate.backbone.runtime import Backbone

        layers = tuple(range(spec.litert.n_layers + 1))
        frames = np.array([len(ours)])
        lite = Backbone(spec, layers, "litert", len(ours)).pooled([ours[None]], frames)
        ref = Backbone(spec, layers, "keras", len(ours)).pooled([ours[None]], frames)
        scale = np.abs(ref).max(axis=(0, 2))
        rel = np.abs(lite - ref).max(axis=(0, 2)) / scale
        print(f"export ({spec.litert.quantization}) vs Keras, pooled states 0-{layers[-1]}, "
              f"max |difference| / range: {', '.join(f'{x:.2e}' for x in rel)}")
    if spec.language is not None:
        _, logits = Backbone(spec, (0,), "litert", len(theirs), language=True).encode(
            [theirs[None]], np.array([len(theirs)]))
        lite_p = np.exp(logits[0] - logits[0].max())
        lite_p /= lite_p.sum()
        print(f"language export ({spec.language.quantization}, model.tflite + "
              f"{spec.language.file}) vs CTranslate2 detect_language, 3 s: max |probability "
              f"difference| {np.abs(lite_p - detected['3 s']).max():.2e}")

    if args.write_golden:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            GOLDEN, features=theirs, encoder=want[::GOLDEN_FRAME_STEP].astype(np.float32),
            encoder_mean=want.mean(axis=0), frame_step=GOLDEN_FRAME_STEP,
            language_p=detected["3 s"].astype(np.float32),
            source=np.array("ctranslate2 %s float32 encode and detect_language; "
                            "faster-whisper FeatureExtractor"
                            % ctranslate2.__version__))
        print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
