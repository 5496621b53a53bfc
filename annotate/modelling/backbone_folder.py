"""The backbone folder: a pretrained encoder's weights, features, export and licence.

A backbone folder holds::

    backbone.json   name, architecture, feature settings, the weights' source
                    and SHA-256, the LiteRT export and its quantisation
    encoder.npz     the encoder's variables by CTranslate2 name, as published
                    (float16); loaded as float32
    model.tflite    the encoder on LiteRT, pooled per hidden state
    LICENSE         the weights' licence
    MODEL_CARD.md   for people: what each file is, where it came from, limits

Heads (ordinary model folders) name it in their ``model.json``
(``"backbone": {"name": ..., "layers": [...]}``); one encoder pass per
speech segment feeds every head.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotate.errors import ModelError
from annotate.features import FeatureParams
from annotate.modelling.model_folder import (
    ModelSpec,
    bundled_models_dir,
    file_sha256,
    read_spec_file,
)

SPEC_FILE = "backbone.json"
FORMAT = "annotate-backbone/1"
WEIGHTS_FILE = "encoder.npz"


@dataclass(frozen=True)
class BackboneExport:
    """``backbone.json``'s record of the LiteRT export.

    Attributes:
        file: The ``.tflite`` file inside the folder.
        weights_sha256: SHA-256 of the ``encoder.npz`` it was converted from.
        n_layers: Transformer blocks kept (the export may stop early).
        quantization: ``"float32"`` or ``"dynamic-range-int8"``.
        batch: Segments per call (the input's fixed first dimension).
    """

    file: str
    weights_sha256: str
    n_layers: int
    quantization: str
    batch: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone folder's description, validated.

    Attributes:
        folder: Where it lives.
        name: What heads call it, e.g. ``"whisper-base"``.
        architecture: ``"whisper-encoder"``.
        features: The encoder's input settings.
        width: Channels of each hidden state (pooled features have twice that).
        n_layers: Transformer blocks of the full encoder.
        source: Where the weights came from (free form).
        litert: The LiteRT export, if any.
    """

    folder: Path
    name: str
    architecture: str
    features: FeatureParams
    width: int
    n_layers: int
    source: dict
    litert: BackboneExport | None = None

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def pooled_width(self) -> int:
        """Size of one hidden state's pooled features (mean and standard deviation)."""
        return 2 * self.width

    def litert_problem(self, layers: tuple[int, ...]) -> str | None:
        """Why the LiteRT export cannot give hidden states ``layers``, or None."""
        if self.litert is None:
            return f"{SPEC_FILE} records no LiteRT export"
        if not (self.folder / self.litert.file).is_file():
            return f"{self.litert.file} is missing"
        if max(layers) > self.litert.n_layers:
            return (f"{self.litert.file} stops after block {self.litert.n_layers}, "
                    f"a head reads hidden state {max(layers)}")
        if file_sha256(self.weights_path) != self.litert.weights_sha256:
            return f"{self.litert.file} was converted from another {WEIGHTS_FILE}"
        return None

    def load_weights(self) -> dict[str, np.ndarray]:
        """The encoder's variables by CTranslate2 name."""
        try:
            with np.load(self.weights_path) as archive:
                return {name.replace("__", "/"): archive[name] for name in archive.files}
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read {self.weights_path}: {error}") from None

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "architecture": self.architecture,
            "features": self.features.to_dict(),
            "width": self.width,
            "n_layers": self.n_layers,
            "weights": WEIGHTS_FILE,
            "source": self.source,
            **({"litert": self.litert.to_json()} if self.litert else {}),
        }


def save_weights(weights: dict[str, np.ndarray], path: Path) -> None:
    """Write variables as an ``.npz`` (names with ``/`` stored as ``__``)."""
    np.savez(path, **{name.replace("/", "__"): value for name, value in weights.items()})


def read_backbone_folder(folder: str | Path) -> BackboneSpec:
    """Read and validate a backbone folder.

    Raises:
        ModelError: Naming what is missing or inconsistent.
    """
    folder = Path(folder)
    path = folder / SPEC_FILE
    raw = read_spec_file(path, "backbone folder")
    if raw.get("format") != FORMAT:
        raise ModelError(f"{path}: format must be {FORMAT!r}")
    missing = [k for k in ("name", "architecture", "features", "width", "n_layers") if k not in raw]
    if missing:
        raise ModelError(f"{path} lacks {', '.join(missing)}")
    if raw["architecture"] != "whisper-encoder":
        raise ModelError(f"{path}: bad architecture {raw['architecture']!r}, "
                         "expected one of [whisper-encoder]")
    try:
        features = FeatureParams.from_dict(raw["features"])
    except (TypeError, ValueError) as error:
        raise ModelError(f"{path}: bad feature settings: {error}") from None
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelError(f"backbone folder {folder} lacks its weights {WEIGHTS_FILE}")
    litert = None
    if raw.get("litert") is not None:
        entry = raw["litert"]
        try:
            litert = BackboneExport(str(entry["file"]), str(entry["weights_sha256"]),
                                    int(entry["n_layers"]), str(entry["quantization"]),
                                    int(entry["batch"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{path}: bad litert entry: {error}") from None
        if not re.fullmatch("[0-9a-f]{64}", litert.weights_sha256):
            raise ModelError(f"{path}: litert.weights_sha256 must be 64 lowercase hex digits")
    return BackboneSpec(folder, str(raw["name"]), raw["architecture"], features,
                        int(raw["width"]), int(raw["n_layers"]), dict(raw.get("source") or {}),
                        litert)


def backbone_of(head: ModelSpec) -> BackboneSpec:
    """The backbone folder a head names: a sibling of the head's folder, else a bundled one.

    Raises:
        ModelError: No such backbone folder, or the head reads features it does not give.
    """
    if head.backbone is None:
        raise ValueError(f"{head.folder} reads no backbone")
    name = head.backbone.name
    places = [head.folder.parent / name, bundled_models_dir() / name]
    folder = next((p for p in places if (p / SPEC_FILE).is_file()), None)
    if folder is None:
        raise ModelError(f"{head.folder} reads the backbone {name!r}, found in none of "
                         f"{', '.join(str(p) for p in places)}")
    spec = read_backbone_folder(folder)
    if max(head.backbone.layers) > spec.n_layers:
        raise ModelError(f"{head.folder} reads hidden state {max(head.backbone.layers)} of "
                         f"{name}, which has {spec.n_layers} blocks")
    if head.backbone.width != spec.pooled_width:
        raise ModelError(f"{head.folder} reads pooled states of width {head.backbone.width}, "
                         f"{name} gives {spec.pooled_width}")
    if head.features.to_dict() | {"segment_s": 0} != spec.features.to_dict() | {"segment_s": 0}:
        raise ModelError(f"{head.folder}: its feature settings are not those of {name}")
    return spec


def write_backbone_folder(spec: BackboneSpec, card: str, licence: str) -> None:
    """Write ``backbone.json``, ``MODEL_CARD.md`` and ``LICENSE`` (weights saved by the caller)."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    (spec.folder / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    (spec.folder / "MODEL_CARD.md").write_text(card)
    (spec.folder / "LICENSE").write_text(licence)
