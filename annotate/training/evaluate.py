"""Measure a model on labelled corpora: held-out recordings or leave-one-speaker-out.

Predictions take ``annotate run``'s path: recordings are cut and featurized
by ``plan_chunks`` + ``featurize_chunk``, the model folder is loaded by
:class:`annotate.modelling.inference.Classifier` (safe mode, calibrated softmax), and a
recording's probabilities are the duration-weighted mean over its speech
segments, as ``annotate summarize`` computes them.

A head on a pretrained backbone (``model.json`` names a ``backbone``) reads
the backbone's pooled hidden states instead of log-mel frames, and is
measured by :mod:`annotate.training.evaluate_heads`. Leave-one-speaker-out
retrains the head with the settings recorded in its folder (no search) and
keeps its temperature.

A language head's probabilities come from where ``annotate run
--language-id`` takes them (``language_id``): by default, as in the run, the
cascade where the head records one (Whisper's language step where the head
is unsure, fused with the head's), so that the figures are those of the
labels a run writes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from annotate.errors import InputError, ModelError, UsageError, expected_one_of
from annotate.modelling.model_folder import ModelSpec, read_model_folder
from annotate.training.corpora.base import Corpus
from annotate.training.evaluate_heads import holdout_head, loso_head
from annotate.training.metrics import (  # noqa: F401 - also the names this module always offered
    ECE_BINS,
    classification_metrics,
    expected_calibration_error,
    recall_per_label,
    recording_probabilities,
    score_recordings,
    unweighted_average_recall,
)
from annotate.training.training_data import (
    Recordings,
    check_speaker_independent,
    collect_items,
    load_crops,
    load_recordings,
    split_by_speaker,
)

PROTOCOLS: tuple[str, ...] = ("holdout", "loso")

Report = Callable[[str], None]


def predict_recordings(spec: ModelSpec, recordings: Recordings) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated segment probabilities of a model folder, as ``annotate run`` computes them.

    Returns:
        np.ndarray [shape=(n_segments, n_labels), float64] in the order of
        ``recordings.stacked()``, and the index of each segment's recording.
    """
    from annotate.modelling.inference import Classifier

    features, owner = recordings.stacked(spec.features)
    return Classifier(spec).load().predict(features), owner


# --- protocols --------------------------------------------------------------------------


def evaluate(
    model_folder: str | Path,
    corpora: list[Corpus],
    protocol: str = "holdout",
    *,
    jobs: int | None = None,
    progress: Report | None = None,
    training_corpora: list[Corpus] | None = None,
    language_id: str = "auto",
    speakers: bool = False,
) -> dict:
    """Measure a model on labelled corpora.

    Args:
        model_folder: A model folder (``annotate train`` writes them).
        corpora: Labelled recordings for the model's task.
        protocol: ``holdout``: score every recording with the given model
            (pass recordings of speakers it was not trained on). ``loso``:
            for each speaker, retrain with the model's recorded
            hyperparameters on the other speakers (early stopping on a split
            of those) and score the left-out speaker's recordings; a head on
            a backbone is retrained with its recorded ``training.settings``
            for their epochs, its temperature kept.
        jobs: Worker processes for decoding and features (default: all cores).
        progress: Receives one line per stage (and per epoch under ``loso``).
        training_corpora: Under ``loso`` with a head only: recordings that
            are in every fold's training data and never scored, for a head
            trained on more corpora than the ones measured (as it was
            trained); recordings with labels the head lacks are dropped.
        language_id: For a language head on a backbone, as ``annotate run
            --language-id`` over the head's labels: ``auto`` (the cascade
            where the head records one and its backbone has Whisper's
            language step, else the head), ``head``, ``cascade`` or
            ``whisper`` (Whisper's step alone).
        speakers: Under ``holdout`` with an emotion head: make each speaker's
            probabilities relative to their own voice, with the corpus
            adapters' speakers, as ``annotate run --speakers`` does
            (:mod:`annotate.modelling.posteriors`).

    Returns:
        A JSON-serialisable dict: ``accuracy``, ``uar``, ``ece``,
        ``per_class_recall``, ``confusion`` (``labels`` and ``matrix``, rows
        true, columns predicted), ``per_speaker``, ``per_segment``,
        ``n_recordings`` (scored recordings), ``split`` (a description),
        ``predictions`` (per recording: path, speaker, label, predicted label
        and probabilities in the order of ``labels``) and more; under ``loso``
        also ``folds``, ``pooled_uar`` and ``mean_fold_uar``. For a head,
        also ``without_speech`` (paths left out).

    Raises:
        UsageError: Unknown protocol, corpora for another task, or a
            ``language_id`` the model cannot give.
        ModelError: The folder is not a usable model, or (``loso``) lacks
            its training hyperparameters.
        InputError: No recording with a label the model knows.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(expected_one_of("protocol", protocol, PROTOCOLS))
    report = progress or (lambda text: None)
    spec = read_model_folder(model_folder)
    source = language_source(spec, language_id)
    if speakers and (protocol != "holdout" or spec.backbone is None or spec.task == "language"):
        raise UsageError("speakers are for holdout with an emotion head on a backbone: "
                         "leave-one-speaker-out scores one speaker at a time, and a speaker's "
                         "language is not relative to their voice")
    items = collect_items(corpora, spec.task)
    known = items["label"].isin(spec.labels)
    skipped = items.loc[~known, "label"].value_counts()
    items = items[known].reset_index(drop=True)
    if items.empty:
        raise InputError(
            f"no recording of {', '.join(c.name for c in corpora)} has a label the model "
            f"knows ({', '.join(spec.labels)})", kind="labels",
        )
    if training_corpora:
        if protocol != "loso" or spec.backbone is None:
            raise UsageError("training corpora are only for leave-one-speaker-out with a head "
                             "on a backbone")
        extra = collect_items(training_corpora, spec.task)
        extra = extra[extra["label"].isin(spec.labels)].reset_index(drop=True)
        shared = sorted(set(extra["speaker"]) & set(items["speaker"]))
        if shared:
            raise UsageError(f"speakers both scored and always trained on: {', '.join(shared)}")
        result = loso_head(spec, items, jobs, report, extra, source)
    elif spec.backbone is not None:
        if protocol == "holdout":
            result = holdout_head(spec, items, jobs, report, source, speakers)
        else:
            result = loso_head(spec, items, jobs, report, source=source)
    else:
        run = _holdout if protocol == "holdout" else _loso
        result = run(spec, items, jobs, report)
    result.update({
        "model": str(spec.folder),
        "task": spec.task,
        "labels": list(spec.labels),
        "protocol": protocol,
        "corpora": [{"name": c.name, "root": str(c.root)} for c in corpora],
        "skipped_labels": {str(k): int(v) for k, v in skipped.items()},
    })
    if spec.task == "language":
        result["language_id"] = source
    return result


def language_source(spec: ModelSpec, requested: str = "auto") -> str:
    """Where an evaluation takes a model's probabilities: ``head``, ``cascade`` or ``whisper``.

    What :meth:`annotate.modelling.model_set.ModelSet.choose_language_id`
    makes of ``--language-id`` for a run over the language model's labels.

    Raises:
        UsageError: An unknown choice, or one the model cannot give.
    """
    from annotate.modelling.model_set import LANGUAGE_IDS, ModelSet

    if requested not in LANGUAGE_IDS:
        raise UsageError(expected_one_of("language identification", requested, LANGUAGE_IDS))
    if spec.task != "language" or spec.backbone is None:
        if requested in ("cascade", "whisper"):
            raise UsageError(f"--language-id {requested} is for a language head on a backbone; "
                             f"{spec.folder} is a {spec.task} model"
                             + ("" if spec.backbone is not None else " on log-mel frames"))
        return "head"
    return ModelSet(spec, {}).choose_language_id(None, requested)[0]


def _holdout(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report) -> dict:
    report(f"featurizing {len(items)} recordings")
    recordings, failures = load_recordings(items, spec.features, jobs)
    report(f"scoring {sum(len(f) for f in recordings.features)} speech segments")
    segment_probs, owner = predict_recordings(spec, recordings)
    result = _measure(spec.labels, recordings, segment_probs, owner)
    trained_on = set(spec.training.get("split", {}).get("train_speakers", [])) | set(
        spec.training.get("split", {}).get("validation_speakers", [])
    )
    seen = sorted(set(recordings.meta["speaker"]) & trained_on)
    result["split"] = (
        f"holdout: all {len(recordings)} readable recordings of "
        f"{recordings.meta['speaker'].nunique()} speakers scored by the given model"
    )
    result["speakers_seen_in_training"] = seen
    if seen:
        result["warning"] = (
            f"{len(seen)} evaluated speaker(s) were used to train or validate this model: "
            "these figures are not speaker-independent"
        )
    result["failures"] = [{"path": f.path, "error": f.error, "message": f.message}
                          for f in failures]
    return result


def _loso(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report) -> dict:
    from annotate.training.train import Hyperparameters, fit_model_folder

    recorded = spec.training.get("hyperparameters")
    if not isinstance(recorded, dict):
        raise ModelError(
            f"{spec.folder}/model.json has no training.hyperparameters: leave-one-speaker-out "
            "retrains with them, so it needs a model written by `annotate train`"
        )
    hyper = Hyperparameters.from_dict(recorded)
    speakers = sorted(items["speaker"].unique())
    if len(speakers) < 3:
        raise InputError(
            f"leave-one-speaker-out needs at least 3 speakers (one left out, two to train "
            f"and validate), found {len(speakers)}", kind="split",
        )
    report(f"featurizing {len(items)} recordings of {len(speakers)} speakers")
    crops, crop_failures = load_crops(items, spec.features, hyper.hop_s, hyper.augment, jobs)
    recordings, failures = load_recordings(items, spec.features, jobs)
    all_probs, all_owner, folds = [], [], []
    offset = 0
    tested_parts = []
    for number, speaker in enumerate(speakers, start=1):
        def fold_report(text: str, prefix=f"fold {number}/{len(speakers)} ({speaker}): ") -> None:
            report(prefix + text)

        rest = items[items["speaker"] != speaker]
        inner = split_by_speaker(rest, hyper.validation_fraction, hyper.seed)
        check_speaker_independent(inner.train["speaker"], [speaker])
        check_speaker_independent(inner.validation["speaker"], [speaker])
        fold_crops = crops.select(crops.meta["speaker"].isin(inner.train["speaker"]).to_numpy())
        fold_val = recordings.select(
            recordings.meta["speaker"].isin(inner.validation["speaker"]).to_numpy()
        )
        tested = recordings.select((recordings.meta["speaker"] == speaker).to_numpy())
        with tempfile.TemporaryDirectory(prefix="annotate-loso-") as folder:
            fold_spec = fit_model_folder(
                Path(folder) / "model", task=spec.task, labels=spec.labels,
                languages=spec.languages, crops=fold_crops, validation=fold_val,
                hyper=hyper, features=spec.features,
                training={"protocol": "loso", "left_out": speaker, "split": inner.describe()},
                name=f"{spec.name}-loso-{number}", progress=fold_report, jobs=jobs,
            )
            probs, owner = predict_recordings(fold_spec, tested)
        fold = _measure(spec.labels, tested, probs, owner)
        folds.append({
            "speaker": speaker,
            "n_recordings": fold["n_recordings"],
            "accuracy": fold["accuracy"],
            "uar": fold["uar"],
            "epochs_run": fold_spec.training["epochs_run"],
            "temperature": fold_spec.temperature,
            "validation_speakers": sorted(inner.validation["speaker"].unique().tolist()),
        })
        report(f"fold {number}/{len(speakers)} ({speaker}): UAR {fold['uar']:.3f} on "
               f"{fold['n_recordings']} recordings")
        all_probs.append(probs)
        all_owner.append(owner + offset)
        offset += len(tested)
        tested_parts.append(tested)
    pooled = Recordings(
        pd.concat([t.meta for t in tested_parts], ignore_index=True),
        [b for t in tested_parts for b in t.bounds],
        [s for t in tested_parts for s in t.speech],
        [f for t in tested_parts for f in t.features],
    )
    result = _measure(spec.labels, pooled, np.concatenate(all_probs), np.concatenate(all_owner))
    fold_uars = [f["uar"] for f in folds if not np.isnan(f["uar"])]
    result.update({
        "split": f"loso: {len(speakers)} folds, one per speaker; each fold retrained with the "
                 "model's recorded hyperparameters on the other speakers (early stopping and "
                 "calibration on a speaker split of those) and scored on the left-out speaker",
        "pooled_uar": result["uar"],
        "mean_fold_uar": float(np.mean(fold_uars)) if fold_uars else float("nan"),
        "folds": folds,
        "hyperparameters": hyper.to_dict(),
        "failures": [{"path": f.path, "error": f.error, "message": f.message}
                     for f in [*crop_failures, *failures]],
    })
    return result


def _measure(labels, recordings: Recordings, segment_probs, owner) -> dict:
    """Per-recording metrics (and per segment, per speaker) of scored recordings."""
    rec_probs, scored = recording_probabilities(recordings, segment_probs)
    return score_recordings(labels, recordings.meta, rec_probs, scored, segment_probs, owner)


# --- pictures ---------------------------------------------------------------------------


def plot_confusion(result: dict, path: str | Path) -> Path:
    """Draw the confusion matrix of an :func:`evaluate` result as a PNG.

    Rows are true labels, columns predicted labels; cells show the share of
    each true label (and the count).

    Raises:
        UsageError: matplotlib is not installed (it is not a dependency).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which annotate does not depend on: "
            "install it (pip install matplotlib) or leave out --plot"
        ) from None
    labels = result["confusion"]["labels"]
    matrix = np.asarray(result["confusion"]["matrix"], np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(labels)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{result.get('protocol', '')}: UAR {result['uar']:.2f}, "
                   f"accuracy {result['accuracy']:.2f}")
    for i in range(len(labels)):
        for j in range(len(labels)):
            axes.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                      color="white" if shares[i, j] > 0.5 else "black", fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


__all__ = [
    "PROTOCOLS",
    "classification_metrics",
    "evaluate",
    "expected_calibration_error",
    "plot_confusion",
    "recording_probabilities",
]
