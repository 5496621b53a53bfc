"""The model folder format: a self-describing directory, read without TensorFlow.

A model folder holds::

    model.json      task, labels, languages, feature settings, temperature,
                    training data and split, validation metrics
    model.keras     the Keras model; its output is logits, one per label
    model.tflite    optional: the same network converted for LiteRT (float32),
                    which runs it without TensorFlow
    MODEL_CARD.md   for people: data, licences, metrics, intended use, limits

``model.json`` records the LiteRT export, when there is one, as
``"litert": {"file": "model.tflite", "keras_sha256": "<hex>"}``: the SHA-256
of the ``model.keras`` it was converted from. The export is current only
while the weights still hash to it (:meth:`ModelSpec.litert_problem`), so a
retrained or replaced ``model.keras`` is never shadowed by an old export.

:func:`read_model_folder` checks that everything inference needs is there and
consistent and names what is missing; :mod:`annotate.modelling.inference` loads the
network (LiteRT, or Keras in safe mode) once a run needs it, and
:mod:`annotate.modelling.litert_export` writes the export.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from annotate.errors import ModelError, expected_one_of
from annotate.features import WHISPER_CONTEXT_FRAMES, FeatureParams
from annotate.labels import EMOTIONS, TASKS

FORMAT = "annotate-model/1"
SPEC_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"
REQUIRED_KEYS = ("format", "name", "task", "labels", "languages", "weights", "features")
LITERT_FILE = "model.tflite"


@dataclass(frozen=True)
class LiteRTExport:
    """``model.json``'s record of the LiteRT export beside the Keras model.

    Attributes:
        file: The ``.tflite`` file inside the folder.
        keras_sha256: SHA-256 (hex) of the Keras file it was converted from.
    """

    file: str
    keras_sha256: str

    def to_json(self) -> dict:
        """The ``litert`` entry of ``model.json``."""
        return {"file": self.file, "keras_sha256": self.keras_sha256}


@dataclass(frozen=True)
class BackboneInput:
    """``model.json``'s ``backbone`` entry: a head reading a pretrained encoder's features.

    Attributes:
        name: The backbone folder's name (a sibling folder, or a bundled one).
        layers: The encoder's hidden states the head reads (0: before the
            first block; i: after block i), each pooled over the segment.
        pooling: ``"stats"``: mean and standard deviation over valid frames.
        width: Size of one pooled hidden state.
    """

    name: str
    layers: tuple[int, ...]
    pooling: str = "stats"
    width: int = 1024

    @property
    def input_size(self) -> int:
        return len(self.layers) * self.width

    def to_json(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "pooling": self.pooling,
                "width": self.width}


@dataclass(frozen=True)
class LanguageCascade:
    """``model.json``'s ``cascade`` entry: Whisper's language identification where a head is unsure.

    A language head on a backbone with Whisper's language step
    (``language.tflite``) sends each speech segment whose top probability
    over the run's candidates is below ``threshold`` on through that step.
    The segment's probabilities become the weighted product of the two
    (a logistic fusion of their log-probabilities, the weights fitted on
    validation speakers): ``softmax(head_weight * log p_head +
    whisper_weight * log p_whisper)``, each renormalised over the candidates
    first. ``scripts/fit_language_cascade.py`` fits it.

    Then the context step: a stretch of a recording (its segments of one
    language after the smoothing, at most ``context_window_frames`` of
    speech) whose duration-weighted top probability is still below
    ``context_threshold`` is asked once more, as Whisper asks: its speech
    joined into one padded window. Each of its segments' probabilities
    becomes ``softmax(log p + context_weight * log p_context)``.

    Attributes:
        threshold: Segments whose top head probability is below it go on to Whisper.
        head_weight: Weight of the head's log-probabilities in the fusion.
        whisper_weight: Weight of Whisper's (with the backbone's temperature).
        fitted_on: What the threshold and weights were chosen on.
        validation: Figures on those recordings (free form).
        context_threshold: Stretches whose top probability is below it get
            Whisper's context (None: never).
        context_weight: Weight of the context's log-probabilities.
        context_window_frames: The context window's length in log-mel
            frames (Whisper's 30 s, 3000, when the entry names none).
    """

    threshold: float
    head_weight: float
    whisper_weight: float
    fitted_on: str = ""
    validation: dict = field(default_factory=dict, compare=False)
    context_threshold: float | None = None
    context_weight: float = 0.0
    context_window_frames: int = WHISPER_CONTEXT_FRAMES

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "head_weight": self.head_weight,
                "whisper_weight": self.whisper_weight, "fitted_on": self.fitted_on,
                "validation": self.validation,
                **({"context_threshold": self.context_threshold,
                    "context_weight": self.context_weight,
                    "context_window_frames": self.context_window_frames}
                   if self.context_threshold is not None else {})}


@dataclass(frozen=True)
class SpeakerAdaptation:
    """``model.json``'s ``speaker_adaptation`` entry: an emotion head's probabilities per speaker.

    With ``annotate run --speakers``, each speaker's log-probabilities are
    centred on the speaker's mean (:mod:`annotate.modelling.posteriors`);
    the result is divided by ``temperature``, fitted on validation speakers
    (:func:`annotate.training.calibration.fit_speaker_adaptation`, with every
    emotion head ``annotate train`` writes) so that it stays calibrated.

    Attributes:
        temperature: Divides the centred log-probabilities.
        fitted_on: What it was fitted on.
        validation: Figures on those recordings (free form).
    """

    temperature: float
    fitted_on: str = ""
    validation: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        return {"temperature": self.temperature, "fitted_on": self.fitted_on,
                "validation": self.validation}


@dataclass(frozen=True)
class RunCentring:
    """``model.json``'s ``run_centring`` entry: a head's probabilities centred on the run's.

    A head trained on each corpus's states centred on its own mean
    (:mod:`annotate.training.transfer`) hears a run the same way when the
    table is written: its log-probabilities are centred on the run's mean,
    shrunk towards the training mean by ``prior_s`` seconds of speech
    (:func:`annotate.modelling.posteriors.centre_on_run`).

    Attributes:
        mean_logits: The head's mean logits over its (centred) training
            segments, before the temperature: where a run's mean is moved to.
        prior_s: Seconds of speech the training mean counts for.
        fitted_on: What the mean was taken over.
    """

    mean_logits: tuple[float, ...]
    prior_s: float
    fitted_on: str = ""

    def to_json(self) -> dict:
        return {"mean_logits": list(self.mean_logits), "prior_s": self.prior_s,
                "fitted_on": self.fitted_on}


@dataclass(frozen=True)
class ModelSpec:
    """A model folder's description (``model.json``), validated.

    Attributes:
        folder: Where the model lives.
        name: Short name, written to the output (``emotion_model``).
        task: One of ``language``, ``emotion``, ``attitude``.
        labels: Output labels in the order of the model's outputs.
        languages: Languages the model serves (ISO 639-1); ``["*"]`` for any.
        weights: File name of the Keras model inside ``folder``.
        features: Feature settings inference must reproduce.
        temperature: Calibration temperature dividing the logits.
        training: Training data, split and settings (free form).
        metrics: Validation metrics (free form).
        litert: The LiteRT export, if one was recorded (it may be stale).
        backbone: For a head on a pretrained encoder, which encoder and
            which of its pooled hidden states it reads; None for a network
            that reads log-mel frames itself.
        switch_probability: For a language model, the chance that the
            language changes between neighbouring speech segments, used to
            smooth its posteriors along a recording; None: no smoothing.
        cascade: For a language head on a backbone with Whisper's language
            step, when to ask that step too and how to fuse the two; None:
            the head alone.
        speaker_adaptation: For an emotion model, its temperature once
            centred per speaker (``annotate run --speakers``); None: 1.
        run_centring: For a head trained for transfer, how its
            probabilities are centred on the run's; None: they are not.
    """

    folder: Path
    name: str
    task: str
    labels: tuple[str, ...]
    languages: tuple[str, ...]
    weights: str
    features: FeatureParams
    temperature: float = 1.0
    training: dict = field(default_factory=dict, compare=False)
    metrics: dict = field(default_factory=dict, compare=False)
    litert: LiteRTExport | None = None
    backbone: BackboneInput | None = None
    switch_probability: float | None = None
    cascade: LanguageCascade | None = None
    speaker_adaptation: SpeakerAdaptation | None = None
    run_centring: RunCentring | None = None

    @property
    def weights_path(self) -> Path:
        return self.folder / self.weights

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One segment's network input: ``(n_frames, n_mels)``, or a head's ``(input_size,)``."""
        if self.backbone is not None:
            return (self.backbone.input_size,)
        return (self.features.n_frames, self.features.n_mels)

    def litert_problem(self) -> str | None:
        """Why the folder's LiteRT export cannot stand in for its Keras model, or None.

        It can while ``model.json`` records it, its file exists and the Keras
        file still hashes to the recorded ``keras_sha256``.
        """
        if self.litert is None:
            return f"{SPEC_FILE} records no LiteRT export"
        if not (self.folder / self.litert.file).is_file():
            return f"{self.litert.file} is missing"
        if file_sha256(self.weights_path) != self.litert.keras_sha256:
            return (f"{self.litert.file} was converted from another {self.weights} "
                    "(the weights changed since the export)")
        return None

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "task": self.task,
            "labels": list(self.labels),
            "languages": list(self.languages),
            "weights": self.weights,
            "features": self.features.to_dict(),
            "temperature": self.temperature,
            "training": self.training,
            "metrics": self.metrics,
            **({"litert": self.litert.to_json()} if self.litert else {}),
            **({"backbone": self.backbone.to_json()} if self.backbone else {}),
            **({"switch_probability": self.switch_probability}
               if self.switch_probability is not None else {}),
            **({"cascade": self.cascade.to_json()} if self.cascade else {}),
            **({"speaker_adaptation": self.speaker_adaptation.to_json()}
               if self.speaker_adaptation else {}),
            **({"run_centring": self.run_centring.to_json()} if self.run_centring else {}),
        }


def read_spec_file(path: Path, kind: str) -> dict:
    """The JSON object in a folder's description file (``model.json``, ``backbone.json``).

    Raises:
        ModelError: The file is missing, not JSON, or not an object.
    """
    if not path.is_file():
        raise ModelError(f"{path.parent} is not a {kind}: {path.name} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return raw


def read_model_folder(folder: str | Path) -> ModelSpec:
    """Read and validate a model folder's ``model.json``.

    Raises:
        ModelError: Naming each missing file or key and each inconsistency.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    spec_path = folder / SPEC_FILE
    raw = read_spec_file(spec_path, "model folder")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ModelError(f"{spec_path} lacks {', '.join(missing)}")
    if raw["format"] != FORMAT:
        raise ModelError(f"{spec_path}: {expected_one_of('format', raw['format'], [FORMAT])}")
    if raw["task"] not in TASKS:
        raise ModelError(f"{spec_path}: {expected_one_of('task', raw['task'], TASKS)}")
    labels = raw["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{spec_path}: labels must be a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise ModelError(f"{spec_path}: labels repeat: {labels}")
    if raw["task"] == "emotion":
        unknown = [x for x in labels if x not in EMOTIONS]
        if unknown:
            raise ModelError(
                f"{spec_path}: {expected_one_of('emotion label', unknown[0], EMOTIONS)}"
            )
    languages = raw["languages"]
    if not isinstance(languages, list) or not languages:
        raise ModelError(f"{spec_path}: languages must be a non-empty list (['*'] for any)")
    try:
        features = FeatureParams.from_dict(raw["features"])
    except (TypeError, ValueError) as error:
        raise ModelError(f"{spec_path}: bad feature settings: {error}") from None
    temperature = float(raw.get("temperature", 1.0))
    if not temperature > 0:
        raise ModelError(f"{spec_path}: temperature must be positive, got {temperature}")
    weights = str(raw["weights"])
    if Path(weights).name != weights or not weights.endswith(".keras"):
        raise ModelError(f"{spec_path}: weights must name a .keras file inside the folder")
    if not (folder / weights).is_file():
        raise ModelError(f"model folder {folder} lacks its weights file {weights}")
    if not (folder / CARD_FILE).is_file():
        raise ModelError(f"model folder {folder} lacks {CARD_FILE}")
    litert = _read_litert(raw.get("litert"), spec_path)
    backbone = _read_backbone(raw.get("backbone"), spec_path)
    switch = raw.get("switch_probability")
    if switch is not None and not (isinstance(switch, (int, float)) and 0 < switch < 1):
        raise ModelError(f"{spec_path}: switch_probability must be a number in (0, 1)")
    return ModelSpec(
        folder=folder,
        name=str(raw["name"]),
        task=raw["task"],
        labels=tuple(labels),
        languages=tuple(str(x) for x in languages),
        weights=weights,
        features=features,
        temperature=temperature,
        training=dict(raw.get("training") or {}),
        metrics=dict(raw.get("metrics") or {}),
        litert=litert,
        backbone=backbone,
        switch_probability=None if switch is None else float(switch),
        cascade=_read_cascade(raw.get("cascade"), spec_path, raw["task"]),
        speaker_adaptation=_read_speaker_adaptation(raw.get("speaker_adaptation"), spec_path,
                                                    raw["task"]),
        run_centring=_read_run_centring(raw.get("run_centring"), spec_path, raw["task"],
                                        len(labels)),
    )


def _read_run_centring(raw, spec_path: Path, task: str, n_labels: int) -> RunCentring | None:
    if raw is None:
        return None
    means = raw.get("mean_logits") if isinstance(raw, dict) else None
    prior = raw.get("prior_s") if isinstance(raw, dict) else None
    if (task == "language" or not isinstance(means, list) or len(means) != n_labels
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in means)
            or not isinstance(prior, (int, float)) or not 0 <= prior < math.inf):
        raise ModelError(f"{spec_path}: run_centring must be an object with mean_logits (a "
                         f"number per label) and prior_s (seconds), on an emotion or "
                         "attitude model")
    return RunCentring(tuple(float(v) for v in means), float(prior),
                       str(raw.get("fitted_on", "")))


def _read_speaker_adaptation(raw, spec_path: Path, task: str) -> SpeakerAdaptation | None:
    if raw is None:
        return None
    temperature = raw.get("temperature") if isinstance(raw, dict) else None
    if (task == "language" or not isinstance(temperature, (int, float))
            or isinstance(temperature, bool) or not 0 < temperature < 100):
        raise ModelError(f"{spec_path}: speaker_adaptation must be an object with a positive "
                         "temperature, on an emotion or attitude model")
    return SpeakerAdaptation(float(temperature), str(raw.get("fitted_on", "")),
                             dict(raw.get("validation") or {}))


def _read_cascade(raw, spec_path: Path, task: str) -> LanguageCascade | None:
    if raw is None:
        return None
    numbers = ("threshold", "head_weight", "whisper_weight")
    if (task != "language" or not isinstance(raw, dict)
            or not all(isinstance(raw.get(k), (int, float)) for k in numbers)):
        raise ModelError(f"{spec_path}: cascade must be an object with numbers "
                         f"{', '.join(numbers)}, on a language model")
    if not 0 <= raw["threshold"] <= 1 or raw["head_weight"] < 0 or raw["whisper_weight"] < 0:
        raise ModelError(f"{spec_path}: cascade threshold must be in [0, 1] and its "
                         "weights not negative")
    context = raw.get("context_threshold")
    weight = raw.get("context_weight", 0.0)
    window = raw.get("context_window_frames", WHISPER_CONTEXT_FRAMES)
    if context is not None and (not isinstance(context, (int, float)) or not 0 <= context <= 1
                                or not isinstance(weight, (int, float)) or weight < 0
                                or not isinstance(window, int) or isinstance(window, bool)
                                or not 0 < window <= WHISPER_CONTEXT_FRAMES):
        raise ModelError(f"{spec_path}: cascade context_threshold must be in [0, 1], "
                         "context_weight not negative and context_window_frames in "
                         f"1..{WHISPER_CONTEXT_FRAMES}")
    return LanguageCascade(float(raw["threshold"]), float(raw["head_weight"]),
                           float(raw["whisper_weight"]), str(raw.get("fitted_on", "")),
                           dict(raw.get("validation") or {}),
                           None if context is None else float(context), float(weight),
                           window)


def _read_backbone(raw, spec_path: Path) -> BackboneInput | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not {"name", "layers"} <= set(raw):
        raise ModelError(f"{spec_path}: backbone must be an object with name and layers")
    layers = raw["layers"]
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(x, int) and x >= 0 for x in layers)):
        raise ModelError(f"{spec_path}: backbone.layers must be a non-empty list of "
                         "hidden-state numbers (0, 1, ...)")
    pooling = raw.get("pooling", "stats")
    if pooling != "stats":
        raise ModelError(f"{spec_path}: {expected_one_of('backbone.pooling', pooling, ['stats'])}")
    width = raw.get("width", 1024)
    if not isinstance(width, int) or width <= 0:
        raise ModelError(f"{spec_path}: backbone.width must be a positive integer")
    return BackboneInput(str(raw["name"]), tuple(layers), pooling, width)


def _read_litert(raw, spec_path: Path) -> LiteRTExport | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not {"file", "keras_sha256"} <= set(raw):
        raise ModelError(f"{spec_path}: litert must be an object with file and keras_sha256")
    name, digest = raw["file"], raw["keras_sha256"]
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".tflite"):
        raise ModelError(f"{spec_path}: litert.file must name a .tflite file inside the folder")
    if not isinstance(digest, str) or not re.fullmatch("[0-9a-f]{64}", digest):
        raise ModelError(f"{spec_path}: litert.keras_sha256 must be 64 lowercase hex digits")
    return LiteRTExport(name, digest)


def write_model_folder(spec: ModelSpec, card: str) -> None:
    """Write ``model.json`` and ``MODEL_CARD.md`` (the weights are saved by the caller)."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    (spec.folder / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    (spec.folder / CARD_FILE).write_text(card)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's contents, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: folder_hash's results by the folder's path and its files' sizes and times.
_hashes: dict[tuple, str] = {}


def folder_hash(folder: str | Path) -> str:
    """SHA-256 over the folder's files (names and contents), as ``sha256:<hex>``.

    Remembered per process while no file of the folder changes (its files'
    names, sizes and modification times): a run asks for its models' hashes
    more than once.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stats = [p.stat() for p in files]
    key = (str(folder.resolve()),
           tuple((p.as_posix(), s.st_size, s.st_mtime_ns) for p, s in zip(files, stats, strict=True)))
    if key not in _hashes:
        _hashes[key] = _content_hash(folder, files)
    return _hashes[key]


def _content_hash(folder: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


#: Environment variable naming a folder of model folders to use instead of
#: the bundled ones (a site-wide model set; the tests point it at their own).
MODELS_ENV = "ANNOTATE_MODELS"


def bundled_models_dir() -> Path:
    """The folder of default models: ``$ANNOTATE_MODELS``, else the package's."""
    import os

    from annotate.resources import resource_dir

    override = os.environ.get(MODELS_ENV)
    return Path(override) if override else resource_dir("models")
