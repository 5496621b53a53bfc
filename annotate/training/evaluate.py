"""Measure a model on labelled corpora: held-out recordings or leave-one-speaker-out.

Predictions take ``annotate run``'s path: recordings are cut and featurized
by ``plan_chunks`` + ``featurize_chunk``, the model folder is loaded by
:class:`annotate.modelling.inference.Classifier` (safe mode, calibrated softmax), and a
recording's probabilities are the duration-weighted mean over its speech
segments, as ``annotate summarize`` computes them.

A head on a pretrained backbone (``model.json`` names a ``backbone``) reads
the backbone's pooled hidden states instead of log-mel frames: its speech
segments are encoded once by the backend ``annotate run`` would choose
(:func:`annotate.training.heads.encode_items`, cached on disk), and a
language head's posteriors are smoothed along each recording as the run
smooths them. Leave-one-speaker-out retrains the head with the settings
recorded in its folder (no search) and keeps its temperature.

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
from annotate.modelling.posteriors import recording_means, smooth_along_recordings
from annotate.training.corpora.base import Corpus
from annotate.training.metrics import (  # noqa: F401 - also the names this module always offered
    ECE_BINS,
    classification_metrics,
    expected_calibration_error,
    recall_per_label,
    recording_probabilities,
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
        result = _loso_head(spec, items, jobs, report, extra, source)
    elif spec.backbone is not None:
        if protocol == "holdout":
            result = _holdout_head(spec, items, jobs, report, source, speakers)
        else:
            result = _loso_head(spec, items, jobs, report, source=source)
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


# --- heads on a backbone ----------------------------------------------------------------


def encode_for_head(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report):
    """The items' speech segments through the head's backbone, as ``annotate run`` encodes them.

    The backend is the one a run would choose for the head's hidden states;
    segments are cut with the head's window (``features.segment_s``).

    Returns:
        :class:`annotate.training.heads.EncodedRecordings` (recordings with
        speech only), the paths left out because they hold no speech, and
        one failure record per unreadable recording.
    """
    from annotate.modelling.backbone_folder import backbone_of
    from annotate.modelling.inference import choose_backbone_backend
    from annotate.training.heads import encode_items

    backbone = backbone_of(spec)
    backend = choose_backbone_backend(backbone, spec.backbone.layers)
    paths = set(items["path"])
    unreadable: dict[str, str] = {}

    def listen(text: str) -> None:
        # encode_items reports each unreadable recording as "skipped <path>: <message>"
        if text.startswith("skipped "):
            for path in paths:
                if text.startswith(f"skipped {path}: "):
                    unreadable[path] = text[len(f"skipped {path}: "):]
        report(text)

    report(f"{len(items)} recordings through {backbone.name} ({backend}), "
           f"{spec.features.segment_s:g} s segments")
    data = encode_items(items, backbone, backend, spec.features.segment_s, None, jobs, listen)
    encoded = set(data.meta["path"])
    silent = sorted(p for p in paths - encoded if p not in unreadable)
    failures = [{"path": p, "error": "unreadable", "message": m}
                for p, m in sorted(unreadable.items())]
    return data, silent, failures


def head_probabilities(spec: ModelSpec, data, source: str = "head", jobs: int | None = None,
                       report: Report | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated segment probabilities of a head, as ``annotate run`` writes them.

    A language head with a ``switch_probability`` is smoothed along each
    recording over all its labels (the run's default candidates).

    Args:
        spec: The head.
        data: Encoded recordings (:func:`encode_for_head`).
        source: For a language head, :func:`language_source`'s answer.
        jobs: Worker processes for reading the recordings again (Whisper's step).
        report: Receives a line on what Whisper's step was asked.

    Returns:
        Segment probabilities [shape=(n_segments, n_labels), float64], each
        segment's recording and its duration in seconds.
    """
    from annotate.modelling.inference import Classifier

    x, owner, durations = data.segments(spec.backbone.layers)
    probs = Classifier(spec).load().predict(x)  # the backend a run would choose
    if source != "head":
        probs = with_whisper(spec, probs, whisper_probabilities(spec, data, jobs), source, report)
    if spec.task == "language" and spec.switch_probability is not None:
        probs = smooth_along_recordings(probs, owner, spec.switch_probability)
    return probs, owner, durations


def whisper_probabilities(spec: ModelSpec, data, jobs: int | None = None) -> np.ndarray:
    """Whisper's calibrated probabilities of a language head's labels, per segment of ``data``."""
    from annotate.modelling.backbone_folder import backbone_of
    from annotate.training.heads import whisper_language_probs

    return whisper_language_probs(backbone_of(spec), data, spec.labels, spec.features.segment_s,
                                  jobs)


def with_whisper(spec: ModelSpec, head: np.ndarray, whisper: np.ndarray, source: str,
                 report: Report | None = None) -> np.ndarray:
    """A language head's segment probabilities as ``source`` gives them (before smoothing)."""
    from annotate.modelling.posteriors import apply_cascade

    if source == "whisper":
        return np.asarray(whisper, np.float64)
    if source != "cascade":
        return head
    c = spec.cascade
    if report is not None and len(head):
        asked = float(np.mean(np.max(head, axis=1) < c.threshold))
        report(f"cascade: Whisper's language step asked for {asked:.1%} of {len(head)} segments")
    return apply_cascade(head, whisper, c.threshold, c.head_weight, c.whisper_weight)


def _holdout_head(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report,
                  source: str = "head", speakers: bool = False) -> dict:
    data, silent, failures = encode_for_head(spec, items, jobs, report)
    probs, owner, durations = head_probabilities(spec, data, source, jobs, report)
    if speakers:
        from annotate.modelling.posteriors import adapt_to_speakers

        temperature = (spec.speaker_adaptation.temperature if spec.speaker_adaptation
                       else 1.0)
        who = data.meta["speaker"].astype(str).to_numpy(dtype=object)[owner]
        probs, adapted = adapt_to_speakers(probs, who, durations, temperature)
        report(f"per speaker: {len(set(who[adapted]))} of {len(set(who))} speakers adapted "
               f"(temperature {temperature:g})")
    report(f"scored {len(probs)} speech segments of {len(data.meta)} recordings")
    rec_probs = recording_means(probs, owner, durations, len(data.meta))
    result = _score(spec.labels, data.meta, rec_probs, np.ones(len(data.meta), bool), probs,
                    owner)
    result["n_without_speech"] = len(silent)
    result["split"] = (
        f"holdout: {len(data.meta)} recordings with speech of "
        f"{data.meta['speaker'].nunique()} speakers scored by the given head on "
        f"{spec.backbone.name}" + _language_note(source)
        + (", emotions relative to each speaker (as annotate run --speakers)" if speakers
           else "")
    )
    result["speakers_seen_in_training"] = []  # heads record no speaker lists
    result["without_speech"] = silent
    result["failures"] = failures
    return result


def _language_note(source: str) -> str:
    return {"head": "", "cascade": " (language: the cascade as annotate run gives it: Whisper's "
            "language step where the head is unsure, with the recorded threshold and weights)",
            "whisper": " (language: Whisper's language step alone)"}[source]


#: Keys a head's ``training.settings`` must hold for leave-one-speaker-out.
HEAD_SETTINGS = ("layers", "hidden", "l2", "dropout", "learning_rate", "epochs")


def _loso_head(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report,
               extra: pd.DataFrame | None = None, source: str = "head") -> dict:
    from annotate.modelling.inference import tensorflow
    from annotate.modelling.posteriors import softmax
    from annotate.training.heads import balanced_weights, corpus_codes, fit_head

    settings = spec.training.get("settings")
    if not isinstance(settings, dict) or any(k not in settings for k in HEAD_SETTINGS):
        raise ModelError(
            f"{spec.folder}/model.json has no complete training.settings "
            f"({', '.join(HEAD_SETTINGS)}): leave-one-speaker-out retrains the head with "
            "them, so it needs a head written by `annotate train`"
        )
    settings = dict(settings, layers=tuple(settings["layers"]))
    if settings["layers"] != spec.backbone.layers:
        raise ModelError(f"{spec.folder}/model.json: training.settings.layers "
                         f"{list(settings['layers'])} differ from backbone.layers "
                         f"{list(spec.backbone.layers)}")
    speakers = sorted(items["speaker"].unique())
    if len(speakers) < 2:
        raise InputError(
            f"leave-one-speaker-out needs at least 2 speakers (one left out, one to train on), "
            f"found {len(speakers)}", kind="split",
        )
    seed = int(spec.training.get("seed", 0))
    everything = items if extra is None else pd.concat([items, extra], ignore_index=True)
    data, silent, failures = encode_for_head(spec, everything, jobs, report)
    labels = spec.labels
    y_rec = data.meta["label"].map({label: i for i, label in enumerate(labels)}).to_numpy(
        np.int64)
    x, owner, durations = data.segments(settings["layers"])
    y = y_rec[owner]
    segment_speaker = data.meta["speaker"].to_numpy()[owner]
    segment_corpus = corpus_codes(data)[owner]
    probs = np.zeros((len(x), len(labels)))
    whisper = whisper_probabilities(spec, data, jobs) if source != "head" else None
    folds = []
    for number, speaker in enumerate(speakers, start=1):
        test = segment_speaker == speaker
        train = ~test
        if not test.any() or not train.any():
            report(f"fold {number}/{len(speakers)} ({speaker}): no speech to "
                   f"{'score' if not test.any() else 'train on'}; skipped")
            continue
        # as annotate train weighs them: corpora and labels balanced, longer segments more
        weights = (balanced_weights(y[train], len(labels), segment_corpus[train])
                   * durations[train] / 3.0)
        model = fit_head(x[train], y[train], weights, len(labels), settings, seed)
        logits = model.predict(x[test], batch_size=256, verbose=0)
        fold_probs = softmax(logits, spec.temperature)
        if whisper is not None:
            fold_probs = with_whisper(spec, fold_probs, whisper[test], source)
        if spec.task == "language" and spec.switch_probability is not None:
            fold_probs = smooth_along_recordings(fold_probs, owner[test],
                                                 spec.switch_probability)
        probs[test] = fold_probs
        del model
        tensorflow().keras.backend.clear_session()  # one graph per fold, not all of them
        mine = np.flatnonzero(data.meta["speaker"].to_numpy() == speaker)
        local = {r: i for i, r in enumerate(mine)}
        local_owner = np.array([local[r] for r in owner[test]])
        fold = _score(labels, data.meta.iloc[mine].reset_index(drop=True),
                      recording_means(fold_probs, local_owner, durations[test], len(mine)),
                      np.ones(len(mine), bool), fold_probs, local_owner)
        folds.append({
            "speaker": speaker,
            "n_recordings": fold["n_recordings"],
            "accuracy": fold["accuracy"],
            "uar": fold["uar"],
            "epochs_run": int(settings["epochs"]),
            "temperature": spec.temperature,
            "train_speakers": len(set(segment_speaker[train])),
        })
        report(f"fold {number}/{len(speakers)} ({speaker}): UAR {fold['uar']:.3f} on "
               f"{fold['n_recordings']} recordings")
    done = np.isin(data.meta["speaker"].to_numpy(), [f["speaker"] for f in folds])
    kept = np.flatnonzero(done)
    local = {r: i for i, r in enumerate(kept)}
    segments = np.isin(owner, kept)
    local_owner = np.array([local[r] for r in owner[segments]], np.int64)
    meta = data.meta.iloc[kept].reset_index(drop=True)
    result = _score(labels, meta,
                    recording_means(probs[segments], local_owner, durations[segments],
                                     len(kept)),
                    np.ones(len(kept), bool), probs[segments], local_owner)
    fold_uars = [f["uar"] for f in folds if not np.isnan(f["uar"])]
    also = "" if extra is None else (
        f" and, in every fold, {len(extra)} recordings of "
        f"{', '.join(sorted(extra['corpus'].astype(str).unique()))} never scored")
    result.update({
        "n_without_speech": len(silent),
        "split": f"loso: {len(folds)} folds, one per speaker; each fold retrained the head "
                 f"with its recorded settings (no search) on the other speakers' "
                 f"{spec.backbone.name} features{also}, kept its temperature "
                 f"{spec.temperature:.3f}, and scored the left-out speaker"
                 + _language_note(source),
        "training_only_recordings": 0 if extra is None else int(len(extra)),
        "pooled_uar": result["uar"],
        "mean_fold_uar": float(np.mean(fold_uars)) if fold_uars else float("nan"),
        "folds": folds,
        "hyperparameters": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in settings.items()},
        "without_speech": silent,
        "failures": failures,
    })
    return result


def _measure(labels, recordings: Recordings, segment_probs, owner) -> dict:
    """Per-recording metrics (and per segment, per speaker) of scored recordings."""
    rec_probs, scored = recording_probabilities(recordings, segment_probs)
    return _score(labels, recordings.meta, rec_probs, scored, segment_probs, owner)


def _score(labels, meta: pd.DataFrame, rec_probs: np.ndarray, scored: np.ndarray,
           segment_probs: np.ndarray, owner: np.ndarray) -> dict:
    """:func:`_measure`'s figures from recording probabilities (``scored``: those with speech)."""
    index = {label: i for i, label in enumerate(labels)}
    true = meta["label"].map(index).to_numpy(np.int64)
    metrics = classification_metrics(true[scored], rec_probs[scored], labels)
    per_segment = classification_metrics(true[owner], segment_probs, labels)
    speakers = meta["speaker"].to_numpy()
    per_speaker = {}
    for speaker in sorted(set(speakers[scored])):
        mine = scored & (speakers == speaker)
        sub = classification_metrics(true[mine], rec_probs[mine], labels)
        per_speaker[str(speaker)] = {
            "n_recordings": sub["n"], "accuracy": sub["accuracy"], "uar": sub["uar"],
        }
    predicted = rec_probs.argmax(axis=1)
    return {
        "n_recordings": metrics["n"],
        "n_without_speech": int((~scored).sum()),
        "accuracy": metrics["accuracy"],
        "uar": metrics["uar"],
        "ece": metrics["ece"],
        "per_class_recall": metrics["per_class_recall"],
        "support": metrics["support"],
        "confusion": metrics["confusion"],
        "per_speaker": per_speaker,
        "per_segment": {k: per_segment[k] for k in ("n", "accuracy", "uar", "ece")},
        "predictions": [
            {"path": str(p), "speaker": str(who), "label": str(t), "predicted": labels[int(k)],
             "probabilities": [round(float(x), 6) for x in row]}
            for p, who, t, k, row, s in zip(meta["path"], speakers, meta["label"], predicted,
                                            rec_probs, scored, strict=True) if s
        ],
    }


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
