"""The states heads learn from: a backbone's float reference, whatever export a run reads.

A run reads a backbone's LiteRT export (``model.tflite``; the bundled one has
dynamic-range int8 weights, for speed). Everything learnt on top of it --
the heads, their temperatures, Whisper's language temperature, the cascade,
speaker adaptation -- is fitted on the states of the same blocks at the
published precision (float16 weights, computed in float32), which equal the
Keras float32 encoder's to about 3e-6 of each state's range. So one set of
heads serves every backend (LiteRT int8, Keras on a GPU), and a quantized
export is judged by what it changes in the labels, held out, not by a
retraining's luck: measured in ``docs/accuracy.md``, the bundled heads on
the int8 exports move no held-out row of the default run by more than
0.01, where heads retrained on int8 states moved four rows by more (one to
three recordings each).

The float16 exports are built here on first use (with TensorFlow, which
training needs anyway) into the cache beside the encoded states, and kept
while the backbone's weights, blocks and settings stay the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from annotate.modelling.backbone_folder import (
    SPEC_FILE,
    BackboneSpec,
    read_backbone_folder,
)

#: Exports whose states are the reference already (no quantization).
REFERENCE_PRECISIONS = ("float16", "float32")


def reference_backbone(spec: BackboneSpec, cache_dir: Path | None = None) -> BackboneSpec:
    """``spec`` as heads are trained on it: its LiteRT blocks with float weights.

    A backbone whose export is float already (or has none: Keras) is its own
    reference. Otherwise a folder with the same ``backbone.json`` (but for
    the exports' precision) and float16 exports of the same blocks and
    language step, in ``reference/`` of the encoded states' cache
    ``cache_dir`` (default: :func:`annotate.training.encoding.default_cache_dir`).
    """
    if spec.litert is None or not _quantized(spec):
        return spec
    if cache_dir is None:
        from annotate.training.encoding import default_cache_dir

        cache_dir = default_cache_dir()
    name = f"{spec.name}-{spec.weights_sha256()[:16]}-{spec.litert.n_layers}"
    folder = Path(cache_dir) / "reference" / name
    wanted = json.loads((spec.folder / SPEC_FILE).read_text())
    wanted["litert"]["quantization"] = "float16"
    if spec.language is not None:
        wanted["language"]["quantization"] = "float16"
    if not (folder / spec.litert.file).is_file() or (
            spec.language is not None and not (folder / spec.language.file).is_file()):
        _build(spec, folder)
    if not (folder / SPEC_FILE).is_file() or json.loads((folder / SPEC_FILE).read_text()) != wanted:
        _copy_parts(spec, folder)
        (folder / SPEC_FILE).write_text(json.dumps(wanted, indent=2) + "\n")
    return read_backbone_folder(folder)


def _quantized(spec: BackboneSpec) -> bool:
    exports = [spec.litert] + ([spec.language] if spec.language is not None else [])
    return any(e.quantization not in REFERENCE_PRECISIONS for e in exports)


def _build(spec: BackboneSpec, folder: Path) -> None:
    from annotate.backbone.export import convert_encoder, convert_language_path
    from annotate.backbone.published import backbone_weights

    folder.mkdir(parents=True, exist_ok=True)
    encoder = backbone_weights(spec)
    blocks = spec.litert.n_layers
    blobs = {spec.litert.file: convert_encoder(encoder, blocks, spec.features.n_mels,
                                               quantize=False, float16=True)}
    if spec.language is not None:
        blobs[spec.language.file] = convert_language_path(
            encoder, backbone_weights(spec, "decoder/"), blocks, float16=True)
    for name, blob in blobs.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(blob)
        tmp.replace(folder / name)


def _copy_parts(spec: BackboneSpec, folder: Path) -> None:
    """The files the reference shares with ``spec``: its weights and licence."""
    names = [spec.weights_path.name] if spec.weights_path is not None else []
    names += [n for n in ("LICENSE",) if (spec.folder / n).is_file()]
    for name in names:
        shutil.copyfile(spec.folder / name, folder / name)

