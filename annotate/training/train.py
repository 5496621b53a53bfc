"""Train a model folder from labelled corpora: ``train(task, corpora, output_dir)``.

corpora -> recordings for the task -> speaker-independent split -> speech
crops (training) and whole recordings cut as ``annotate run`` cuts them
(validation) -> network (fresh, or started from a donor model's layers)
fitted with class-balanced loss, fresh augmentation every epoch and early
stopping on validation loss -> ``model.keras`` and its LiteRT export
``model.tflite`` -> temperature fitted on validation logits (for an
emotion or attitude model, on each recording's top label) -> validation
metrics per recording and per segment -> ``model.json`` + ``MODEL_CARD.md``.

The epochs are fitted in :mod:`annotate.training.fitting`, the temperature
in :mod:`annotate.training.calibration`, the card written by
:mod:`annotate.training.cards`. TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotate.errors import InputError, UsageError, expected_one_of
from annotate.features import FeatureParams
from annotate.modelling.model_folder import (
    ModelSpec,
    file_sha256,
    read_model_folder,
    write_model_folder,
)
from annotate.modelling.networks import ARCHITECTURES, network_options
from annotate.training.augment import AugmentSettings
from annotate.training.calibration import fit_confidence_temperature, fit_temperature
from annotate.training.cards import model_card
from annotate.training.corpora.base import Corpus
from annotate.training.fitting import fit_network
from annotate.training.metrics import (
    classification_metrics,
    negative_log_likelihood,
    recording_probabilities,
)
from annotate.training.training_data import (
    Crops,
    Recordings,
    collect_items,
    load_crops,
    load_recordings,
    split_by_speaker,
)

Report = Callable[[str], None]

#: Licence (or terms of use) of each corpus, for the model card.
CORPUS_LICENCES: dict[str, str] = {
    "emodb": "free for research use; listed as CC0-1.0 by audEERING's audb",
    "emovo": "research use only, with acknowledgement (non-commercial)",
    "ravdess": "CC BY-NC-SA 4.0 (non-commercial, share-alike)",
    "commonvoice": "CC0-1.0",
    "cremad": "Open Database License (ODbL) 1.0",
    "attack": "research use only (non-commercial)",
}


@dataclass(frozen=True)
class Hyperparameters:
    """Everything about fitting that a retraining (LOSO) must repeat.

    Attributes:
        architecture: One of :data:`annotate.modelling.networks.ARCHITECTURES`.
        network: Options of the architecture (see ``networks.DEFAULT_OPTIONS``).
        epochs: Most epochs; early stopping may end sooner.
        batch_size: Crops per gradient step.
        learning_rate: Of the Adam optimiser.
        seed: Seeds the split, the initial weights, the order and the augmentation.
        validation_fraction: Share of each corpus' speakers set aside (when
            the corpus has no official dev split).
        patience: Epochs without a lower validation loss before stopping.
        hop_s: Hop between training crops in seconds (None: half a segment).
        augment: Perturb the audio and mask the features, fresh every epoch.
        augmentation: The augmentation's probabilities and ranges.
    """

    architecture: str = "cnn"
    network: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    validation_fraction: float = 0.2
    patience: int = 5
    hop_s: float | None = None
    augment: bool = True
    augmentation: AugmentSettings = AugmentSettings()

    def check(self) -> None:
        """Raise :class:`UsageError` for a value that cannot work."""
        if self.architecture not in ARCHITECTURES:
            raise UsageError(expected_one_of("architecture", self.architecture, ARCHITECTURES))
        network_options(self.architecture, self.network)
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UsageError(f"learning rate must be positive, got {self.learning_rate}")
        if not 0 < self.validation_fraction < 1:
            raise UsageError("validation fraction must be in (0, 1), "
                             f"got {self.validation_fraction}")
        if self.hop_s is not None and not self.hop_s > 0:
            raise UsageError(f"crop hop must be positive, got {self.hop_s}")

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["network"] = network_options(self.architecture, self.network)
        values["augmentation"] = self.augmentation.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Hyperparameters:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(expected_one_of("hyperparameter", unknown[0], known))
        values = dict(values)
        if "augmentation" in values:
            values["augmentation"] = AugmentSettings(
                **{k: tuple(v) if isinstance(v, list) else v
                   for k, v in values["augmentation"].items()}
            )
        return cls(**values)


def train(
    task: str,
    corpora: list[Corpus],
    output_dir: str | Path,
    *,
    architecture: str = "cnn",
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    validation_fraction: float = 0.2,
    augment: bool = True,
    features: FeatureParams = FeatureParams(),
    languages: list[str] | None = None,
    progress: Report | None = None,
    patience: int = 5,
    hop_s: float | None = None,
    network: dict | None = None,
    augmentation: AugmentSettings = AugmentSettings(),
    max_files_per_corpus: int | None = None,
    jobs: int | None = None,
    name: str | None = None,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    freeze_initialised: bool = False,
) -> ModelSpec:
    """Train a model on labelled corpora and write its model folder.

    Args:
        task: ``language``, ``emotion`` or ``attitude``.
        corpora: Read by :func:`annotate.training.corpora.read_corpus`.
        output_dir: The model folder to write (must not exist unless ``overwrite``).
        architecture: ``cnn`` or ``crnn``.
        epochs: Most epochs; early stopping on validation loss may end sooner.
        batch_size: Crops per gradient step.
        learning_rate: Adam's learning rate.
        seed: Seeds everything random; the same seed gives the same model.
        validation_fraction: Share of speakers set aside per corpus and language.
        augment: Perturb audio and mask features, fresh every epoch.
        features: Feature settings; inference reproduces them from ``model.json``.
        languages: Languages an emotion/attitude model serves (default: the
            corpora's); ``["*"]`` for a cross-lingual model. Ignored for the
            language task, whose labels are the languages.
        progress: Receives one line per stage and per epoch.
        patience: Epochs without a lower validation loss before stopping.
        hop_s: Hop between training crops (default: half a segment).
        network: Architecture options overriding ``networks.DEFAULT_OPTIONS``.
        augmentation: Augmentation probabilities and ranges.
        max_files_per_corpus: Use a seeded sample of each corpus (quick runs).
        jobs: Worker processes for decoding and features (default: all cores).
        name: The model's name (default: the folder's name).
        overwrite: Replace an existing ``output_dir``.
        init_from: A model folder whose weights start the network (transfer
            learning): every layer with the same name and weight shapes is
            copied, the output layer never. The donor's name and the SHA-256
            of its ``model.keras`` are recorded in the card. LOSO retraining (``annotate evaluate``)
            starts from scratch, since the donor may have heard the speaker.
        freeze_initialised: Keep the copied layers fixed and train only the
            rest (with the CNN: the output layer, a linear probe of the
            donor's features): for corpora with very few speakers.

    Returns:
        The written model's spec (also readable with ``read_model_folder``).

    Raises:
        UsageError: Bad arguments, or ``output_dir`` exists.
        InputError: The data cannot be split or holds too few labels.
    """
    started = time.monotonic()
    report = progress or (lambda text: None)
    output_dir = Path(output_dir)
    hyper = Hyperparameters(
        architecture=architecture, network=dict(network or {}), epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        validation_fraction=validation_fraction, patience=patience, hop_s=hop_s,
        augment=augment, augmentation=augmentation,
    )
    hyper.check()
    if languages:
        check_languages(languages)
    check_output_dir(output_dir, overwrite)
    donor = read_model_folder(init_from) if init_from is not None else None
    items = collect_items(corpora, task, max_files_per_corpus, seed)
    split = split_by_speaker(items, validation_fraction, seed)
    described = split.describe()
    report(f"{len(items)} recordings: {len(split.train)} for training "
           f"({len(described['train_speakers'])} speakers), {len(split.validation)} for "
           f"validation ({len(described['validation_speakers'])} speakers)")
    crops, crop_failures = load_crops(split.train, features, hyper.hop_s, augment, jobs)
    validation, val_failures = load_recordings(split.validation, features, jobs)
    labels = tuple(sorted(set(crops.meta["label"])))
    if len(labels) < 2:
        raise InputError(
            f"training needs at least two labels with speech, found {list(labels)}", kind="labels"
        )
    validation = validation.select(validation.meta["label"].isin(labels).to_numpy())
    report(f"{len(crops)} training crops, {len(validation)} validation recordings "
           f"({sum(len(f) for f in validation.features)} speech segments)")
    training = {
        "task": task,
        "corpora": [_describe_corpus(c, items) for c in corpora],
        "split": {**described, "seed": seed, "validation_fraction": validation_fraction},
        "hyperparameters": hyper.to_dict(),
        "max_files_per_corpus": max_files_per_corpus,
        "initialised_from": None if donor is None else {
            "name": donor.name, "folder": str(donor.folder),
            "keras_sha256": file_sha256(donor.weights_path),
            "frozen": freeze_initialised,
        },
        "failed_files": [
            {"path": f.path, "error": f.error, "message": f.message}
            for f in [*crop_failures, *val_failures]
        ],
    }
    # Written beside the output and renamed at the end: an interrupted training
    # never leaves a folder that looks like a model.
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        spec = fit_model_folder(
            partial, task=task, labels=labels,
            languages=model_languages(task, labels, items, languages),
            crops=crops, validation=validation, hyper=hyper, features=features,
            training=training, name=name or output_dir.name, progress=report, jobs=jobs,
            donor=donor, freeze_initialised=freeze_initialised,
        )
        spec.training["seconds"] = round(time.monotonic() - started, 1)
        write_model_folder(spec, model_card(spec))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(partial, output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    spec = dataclasses.replace(spec, folder=output_dir)
    report(f"wrote {output_dir}: validation UAR {spec.metrics['uar']:.3f} per recording "
           f"({spec.training['seconds']:.0f} s)")
    return spec


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to write over a file, or over an existing folder unless ``overwrite``."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output {output_dir} is a file, expected a folder for the model")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UsageError(f"output folder {output_dir} exists and is not empty; pass --overwrite")


def model_languages(task: str, labels, items, languages: list[str] | None) -> tuple[str, ...]:
    """The ``languages`` field of a new model.

    A language model serves the languages it labels; an emotion or attitude
    model serves ``languages`` if given, else the languages of its corpora.
    """
    if task == "language":
        return tuple(labels)
    if languages:
        return check_languages(languages)
    found = sorted(set(items["language"].dropna()))
    return tuple(found) or ("*",)


def check_languages(languages: list[str]) -> tuple[str, ...]:
    """Check the languages a model is declared to serve.

    Raises:
        UsageError: A code that is neither ``*`` nor a lower-case ISO 639-1
            code, or ``*`` mixed with codes.
    """
    for code in languages:
        if code != "*" and not (len(code) == 2 and code.isalpha() and code.islower()):
            raise UsageError(f"bad language {code!r}, expected '*' (any language) or an "
                             "ISO 639-1 code such as de, en, fr, it")
    if "*" in languages and len(languages) > 1:
        raise UsageError(f"languages {languages}: '*' (any language) cannot be mixed with codes")
    return tuple(dict.fromkeys(languages))


def fit_model_folder(
    folder: Path,
    *,
    task: str,
    labels: tuple[str, ...],
    languages: tuple[str, ...],
    crops: Crops,
    validation: Recordings,
    hyper: Hyperparameters,
    features: FeatureParams,
    training: dict,
    name: str,
    progress: Report | None = None,
    jobs: int | None = None,
    donor: ModelSpec | None = None,
    freeze_initialised: bool = False,
) -> ModelSpec:
    """Fit a network on loaded data, calibrate and measure it, write its folder.

    Args:
        folder: Where the model folder is written.
        task: The model's task.
        labels: Output labels, in output order.
        languages: The model's ``languages`` field.
        crops: Training crops (audio kept if ``hyper.augment``).
        validation: Validation recordings, cut as ``annotate run`` cuts them.
        hyper: How to fit.
        features: The crops' feature settings.
        training: Description of the data, completed with the fit and saved
            as ``model.json``'s ``training``.
        name: The model's name.
        progress: Receives one line per epoch.
        jobs: Worker processes for the augmentation.
        donor: A model whose matching layers initialise the network.
        freeze_initialised: Do not train the layers copied from ``donor``.

    Returns:
        The spec written to ``folder``.
    """
    from annotate.modelling.inference import Classifier
    from annotate.modelling.posteriors import softmax

    report = progress or (lambda text: None)
    if not len(crops):
        raise InputError("no training crop holds speech: nothing to train on", kind="empty")
    val_features, owner = validation.stacked(features)
    if not len(val_features):
        raise InputError("no validation recording holds speech: cannot validate", kind="empty")
    index = {label: i for i, label in enumerate(labels)}
    val_true = validation.meta["label"].map(index).to_numpy(np.int64)
    model, fit = fit_network(crops, val_features, val_true[owner], labels, hyper, features,
                              report, jobs, donor, freeze_initialised)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    spec = ModelSpec(folder=folder, name=name, task=task, labels=tuple(labels),
                     languages=tuple(languages), weights="model.keras", features=features)
    from annotate.modelling.litert_export import convert_to_litert

    spec = convert_to_litert(spec, required=False)  # model.tflite for `annotate run`
    # The saved model, loaded as `annotate run` loads it, gives the validation outputs.
    logits = Classifier(spec).load().logits(val_features)
    if task == "language":
        temperature = fit_temperature(logits, val_true[owner])
    else:  # the top label a recording reports, as for a head (calibration)
        temperature = fit_confidence_temperature(logits, owner, validation.segment_durations(),
                                                 val_true)
    segment_probs = softmax(logits, temperature)
    recording_probs, scored = recording_probabilities(validation, segment_probs)
    per_recording = classification_metrics(val_true[scored], recording_probs[scored], labels)
    per_segment = classification_metrics(val_true[owner], segment_probs, labels)
    metrics = {
        "accuracy": per_recording["accuracy"],
        "uar": per_recording["uar"],
        "ece": per_recording["ece"],
        "per_class_recall": per_recording["per_class_recall"],
        "confusion": per_recording["confusion"],
        "per_segment": {k: per_segment[k] for k in
                        ("accuracy", "uar", "ece", "per_class_recall", "n")},
        "validation_data": {
            "recordings": int(scored.sum()),
            "recordings_without_speech": int((~scored).sum()),
            "segments": int(len(val_features)),
            "speakers": sorted(validation.meta["speaker"].unique().tolist()),
            "how": "per recording: duration-weighted mean of the calibrated segment "
                   "probabilities over speech segments, as `annotate run` + summarize; "
                   "segments as `annotate run` cuts them for this model (window = hop = "
                   f"{features.segment_s} s)",
        },
        "nll_per_segment": {
            "uncalibrated": negative_log_likelihood(logits, val_true[owner]),
            "calibrated": negative_log_likelihood(logits / temperature, val_true[owner]),
        },
    }
    labels_seen = crops.meta["label"].value_counts()
    training = {
        **training,
        "labels": list(labels),
        "train_crops": {str(k): int(labels_seen.get(k, 0)) for k in labels},
        "train_recordings": int(crops.meta["path"].nunique()),
        "class_balancing": "loss weights inversely proportional to each label's share of "
                           "the training crops",
        "epochs_run": fit["epochs_run"],
        "best_epoch": fit["best_epoch"],
        **({"layers_initialised": fit["layers_initialised"]} if donor is not None else {}),
        "history": fit["history"],
        "parameters": int(model.count_params()),
        "software": _versions(),
    }
    spec = dataclasses.replace(spec, temperature=temperature, training=training, metrics=metrics)
    write_model_folder(spec, model_card(spec))
    return spec


def _describe_corpus(corpus: Corpus, items) -> dict:
    used = items[items["corpus"] == corpus.name]
    return {
        "name": corpus.name,
        "root": str(corpus.root),
        "files": int(len(corpus.items)),
        "files_used": int(len(used)),
        "speakers": int(used["speaker"].nunique()),
        "unparsed_files": len(corpus.unparsed),
        "licence": CORPUS_LICENCES.get(corpus.name, "unknown: check the corpus' terms"),
    }


def _versions() -> dict:
    from annotate._version import __version__
    from annotate.modelling.inference import tensorflow

    tf = tensorflow()
    return {"annotate": __version__, "tensorflow": tf.__version__,
            "keras": tf.keras.__version__}


__all__ = ["Hyperparameters", "fit_model_folder", "train"]
