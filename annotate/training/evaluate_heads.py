"""Measure a head on a pretrained backbone: held-out recordings or leave-one-speaker-out.

:func:`annotate.training.evaluate.evaluate` comes here for a model folder
that names a ``backbone``. The head reads the backbone's pooled hidden states
instead of log-mel frames: its speech segments are encoded once by the
backend ``annotate run`` would choose
(:func:`annotate.training.encoding.encode_items`, cached on disk), and a
language head's posteriors are smoothed along each recording as the run
smooths them. Leave-one-speaker-out retrains the head with the settings
recorded in its folder (no search) and keeps its temperature.

A language head's probabilities come from where ``annotate run
--language-id`` takes them
(:func:`annotate.training.evaluate.language_source`): the head, the
cascade (Whisper's language step where the head is unsure, fused with the
head's) or Whisper's step alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotate.errors import InputError, ModelError
from annotate.modelling.model_folder import ModelSpec
from annotate.modelling.posteriors import recording_means, smooth_along_recordings
from annotate.training.encoding import Report
from annotate.training.metrics import score_recordings


def encode_for_head(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report):
    """The items' speech segments through the head's backbone, as ``annotate run`` encodes them.

    The backend is the one a run would choose for the head's hidden states;
    segments are cut with the head's window (``features.segment_s``).

    Returns:
        :class:`annotate.training.encoding.EncodedRecordings` (recordings with
        speech only), the paths left out because they hold no speech, and
        one failure record per unreadable recording.
    """
    from annotate.modelling.backbone_folder import backbone_of
    from annotate.modelling.inference import choose_backbone_backend
    from annotate.training.encoding import encode_items

    backbone = backbone_of(spec)
    backend = choose_backbone_backend(backbone, spec.backbone.layers)
    report(f"{len(items)} recordings through {backbone.name} ({backend}), "
           f"{spec.features.segment_s:g} s segments")
    data = encode_items(items, backbone, backend, spec.features.segment_s, None, jobs, report)
    unreadable = {f.path: f.message for f in data.failures}
    silent = sorted(p for p in set(items["path"]) - set(data.meta["path"])
                    if p not in unreadable)
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
        source: For a language head,
            :func:`annotate.training.evaluate.language_source`'s answer.
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
    if source != "head":
        probs = with_context(spec, probs, owner, durations, data, source, jobs, report)
    if spec.task == "language" and spec.switch_probability is not None:
        probs = smooth_along_recordings(probs, owner, spec.switch_probability)
    return probs, owner, durations


def whisper_probabilities(spec: ModelSpec, data, jobs: int | None = None) -> np.ndarray:
    """Whisper's calibrated probabilities of a language head's labels, per segment of ``data``."""
    from annotate.modelling.backbone_folder import backbone_of
    from annotate.training.calibration import whisper_language_probs

    return whisper_language_probs(backbone_of(spec), data, spec.labels, spec.features.segment_s,
                                  jobs)


def with_whisper(spec: ModelSpec, head: np.ndarray, whisper: np.ndarray, source: str,
                 report: Report | None = None) -> np.ndarray:
    """A language head's segment probabilities as ``source`` gives them (before smoothing).

    Through the run's own language source
    (:meth:`annotate.modelling.language_source.LanguageSource.combine`), so
    that a head is evaluated as ``annotate run`` labels with it.
    """
    from annotate.modelling.language_source import SOURCES

    language = SOURCES[source](tuple(spec.labels), tuple(spec.labels))
    if report is not None and source == "cascade" and len(head):
        asked = float(np.mean(language.unsure(head, spec)))
        report(f"cascade: Whisper's language step asked for {asked:.1%} of {len(head)} segments")
    return language.combine(head, whisper, spec)


def context_runner(spec: ModelSpec):
    """The backbone that answers a language head's context windows (loaded on first use)."""
    from annotate.backbone.runtime import Backbone
    from annotate.modelling.backbone_folder import backbone_of
    from annotate.modelling.inference import choose_backbone_backend

    backbone = backbone_of(spec)
    return Backbone(backbone, (0,), choose_backbone_backend(backbone, (0,)),
                    spec.features.n_frames)


def with_context(spec: ModelSpec, probs: np.ndarray, owner: np.ndarray, durations: np.ndarray,
                 data, source: str = "cascade", jobs: int | None = None,
                 report: Report | None = None, runner=None) -> np.ndarray:
    """A source's segment probabilities with Whisper's context where a run asks it.

    Through :meth:`annotate.modelling.language_source.LanguageSource.with_context`,
    as the annotator labels; only the recordings with a stretch asked are read again.
    ``runner``: a :func:`context_runner` to reuse (leave-one-speaker-out asks
    in every fold); by default one is made for the call.
    """
    from annotate.modelling.backbone_folder import backbone_of
    from annotate.modelling.language_source import SOURCES, ContextInput
    from annotate.training.training_data import load_recordings

    language = SOURCES[source](tuple(spec.labels), tuple(spec.labels))
    backbone = backbone_of(spec)
    step = language.context_step(spec, backbone.language)
    if step is None or not len(probs):
        return probs
    frames = spec.features.segment_frames(durations)
    rows = [np.flatnonzero(owner == r) for r in range(len(data.meta))]
    asked = [r for r, at in enumerate(rows)
             if language.context_units(probs[at], durations[at], frames[at], spec, step,
                                       step.window_frames)]
    if report is not None:
        report(f"context: Whisper's window asked for {len(asked)} of {len(rows)} recordings")
    if not asked:
        return probs
    runner = runner or context_runner(spec)
    recordings, failures = load_recordings(data.meta.iloc[asked], spec.features, jobs)
    inputs = []
    for k, r in enumerate(asked):
        at = rows[r]
        if failures or not np.allclose(recordings.speech_durations(k), durations[at]):
            raise InputError("the recordings read differently than when they were encoded")
        def segment(i: int, stack=recordings.features[k], n=frames[at]) -> np.ndarray:
            return stack[i][: n[i]]

        inputs.append(ContextInput(probs[at], durations[at], frames[at], segment))
    out = np.array(probs, dtype=np.float64)
    fused = language.with_context(inputs, runner.context_languages, spec, step,
                                  backbone.language.temperature)
    for r, p in zip(asked, fused, strict=True):
        out[rows[r]] = p
    return out


def holdout_head(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report,
                 source: str = "head", speakers: bool = False) -> dict:
    """:func:`annotate.training.evaluate.evaluate`'s ``holdout`` for a head."""
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
    result = score_recordings(spec.labels, data.meta, rec_probs, np.ones(len(data.meta), bool),
                              probs, owner)
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
            "language step where the head is unsure, with the recorded threshold and weights, "
            "and its context where the run asks it)",
            "whisper": " (language: Whisper's language step alone, and its context where "
                       "the run asks it)"}[source]


#: Keys a head's ``training.settings`` must hold for leave-one-speaker-out.
HEAD_SETTINGS = ("layers", "hidden", "l2", "dropout", "learning_rate", "epochs")


def loso_head(spec: ModelSpec, items: pd.DataFrame, jobs, report: Report,
              extra: pd.DataFrame | None = None, source: str = "head") -> dict:
    """:func:`annotate.training.evaluate.evaluate`'s ``loso`` for a head.

    ``extra``: recordings in every fold's training data, never scored.
    """
    from annotate.modelling.inference import tensorflow
    from annotate.modelling.posteriors import softmax
    from annotate.training.encoding import corpus_codes
    from annotate.training.search import balanced_weights, fit_head

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
    runner = context_runner(spec) if whisper is not None else None  # one for every fold
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
            fold_probs = with_context(spec, fold_probs, owner[test], durations[test], data,
                                      source, jobs, runner=runner)
        if spec.task == "language" and spec.switch_probability is not None:
            fold_probs = smooth_along_recordings(fold_probs, owner[test],
                                                 spec.switch_probability)
        probs[test] = fold_probs
        del model
        tensorflow().keras.backend.clear_session()  # one graph per fold, not all of them
        mine = np.flatnonzero(data.meta["speaker"].to_numpy() == speaker)
        local = {r: i for i, r in enumerate(mine)}
        local_owner = np.array([local[r] for r in owner[test]])
        fold = score_recordings(labels, data.meta.iloc[mine].reset_index(drop=True),
                                recording_means(fold_probs, local_owner, durations[test],
                                                len(mine)),
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
    result = score_recordings(labels, meta,
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
