"""Heads on a pretrained backbone: from corpora to a model folder.

``annotate train ... --architecture head`` ends here. The recordings are
encoded once, their pooled hidden states cached on disk
(:mod:`annotate.training.encoding`). A head is a small Keras network on the
pooled states of some hidden layers: standardisation, dropout, an optional
hidden layer, logits. Its settings are chosen by a search over
speaker-disjoint folds of the training speakers
(:mod:`annotate.training.search`); the test speakers are never seen. The
temperature is fitted on the out-of-fold logits of the chosen settings
(:mod:`annotate.training.calibration`: for an emotion head, on its
recordings' top-label confidence; with the language smoothing, the
cascade and the per-speaker temperature), which also give the validation
metrics written to ``model.json``; the final head is then trained on every
training speaker, and its card written (:mod:`annotate.training.cards`).
An emotion head's temperature weighs every corpus it trains on the same. A
cross-lingual emotion head (``*``) on several corpora is chosen for transfer
instead (:mod:`annotate.training.transfer`): each corpus centred, one left
out at a time, its temperature fitted on the left-out predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from annotate.errors import UsageError
from annotate.modelling.backbone_folder import BackboneSpec
from annotate.modelling.model_folder import (
    BackboneInput,
    ModelSpec,
    RunCentring,
    write_model_folder,
)
from annotate.modelling.posteriors import PRIOR_S, recording_means, softmax, uar
from annotate.training.calibration import (
    calibration_rows,
    corpus_weights,
    fit_confidence_temperature,
    fit_language_cascade,
    fit_speaker_adaptation,
    fit_switch_probability,
    fit_temperature,
)
from annotate.training.cards import head_card
from annotate.training.copies import copy_sources
from annotate.training.encoding import (
    Copies,
    EncodedRecordings,
    Report,
    corpus_codes,
    default_cache_dir,
    encode_items,
    training_rows,
)
from annotate.training.search import (
    balanced_weights,
    fit_head,
    jsonable,
    out_of_fold_logits,
    search_settings,
    speaker_folds,
    validation_score,
)
from annotate.training.transfer import (
    centre_corpora,
    corpus_folds,
    has_corpora_to_leave_out,
    learnable_elsewhere,
    shared_labels,
    transfer_metrics,
    transfer_score,
)


def train_head(task: str, data: EncodedRecordings, labels: tuple[str, ...],
               languages: tuple[str, ...], backbone: BackboneSpec, backend: str,
               output_dir: Path, name: str, trials: int = 0, n_folds: int = 4, seed: int = 0,
               training_info: dict | None = None, smooth_language: bool = False,
               cascade: bool = False, window_s: float = 3.0, jobs: int | None = None,
               report: Report = print) -> ModelSpec:
    """Search, calibrate, train and write a head model folder (with its LiteRT export).

    Args:
        task: ``language`` or ``emotion``.
        data: The training speakers' encoded recordings; ``meta`` has
            ``label`` and ``speaker`` columns.
        labels: Output labels, in order; recordings with other labels are dropped.
        languages: Languages the model serves (``["*"]`` for any).
        backbone: The backbone the head reads.
        backend: The backend ``data`` was encoded with (written to the card).
        output_dir: The model folder to write.
        name: The model's name.
        trials: Search trials (0: :data:`annotate.training.search.DEFAULT_SETTINGS`).
        n_folds: Speaker-disjoint validation folds.
        seed: Seeds folds, search and weights.
        training_info: Extra facts for ``model.json``'s ``training`` entry.
        smooth_language: Fit a switch probability for smoothing the
            language along recordings
            (:func:`annotate.training.calibration.fit_switch_probability`).
        cascade: For a language head on a backbone with Whisper's language
            step, also fit when to ask it and how to fuse the two
            (:func:`annotate.training.calibration.fit_language_cascade`), on
            the same out-of-fold logits.
        window_s: The window ``data`` was encoded with (for the cascade).
        jobs: Feature jobs (for the cascade).
    """
    from annotate.modelling.litert_export import convert_to_litert
    from annotate.training.metrics import expected_calibration_error

    data = data.subset(data.meta["label"].isin(labels).to_numpy())
    transfer = task != "language" and "*" in languages and has_corpora_to_leave_out(data)
    if transfer:
        data, _ = centre_corpora(data)
    data, copy_data, copy_original = data.split_copies()
    copies = Copies(copy_data, copy_original) if len(copy_original) else None
    index = {label: i for i, label in enumerate(labels)}
    y_rec = data.meta["label"].map(index).to_numpy().astype(np.int64)
    missing = [label for label in labels if label not in set(data.meta["label"])]
    if missing:
        raise UsageError(f"no training recording is labelled {', '.join(missing)}")
    speakers = (data.meta.get("corpus", pd.Series([""] * len(data.meta))).astype(str) + ":"
                + data.meta["speaker"].astype(str)).to_numpy()
    folds = speaker_folds(speakers, n_folds, seed)
    max_layer = data.states[0].shape[1] - 1
    report(f"{task} head on {backbone.name}: {len(data.meta)} recordings "
           f"(+ {len(copy_original)} augmented copies), {len(set(speakers))} speakers, "
           f"{len(folds)} speaker folds, {trials} search trials")
    search = {"folds": folds, "objective": None, "hidden": (0, 256),
              "text": "per-recording UAR of each corpus on the out-of-fold predictions, "
                      "averaged over corpora"}
    if transfer:
        corpus_code = corpus_codes(data)
        shared = shared_labels(y_rec, corpus_code, len(labels))
        search = {"folds": corpus_folds(data),
                  "objective": lambda rec: transfer_score(y_rec, rec, corpus_code, shared),
                  "hidden": (0,),
                  "text": "leave one corpus out (each corpus centred on its own mean): per-"
                          "recording UAR over the emotions every corpus has ("
                          + ", ".join(labels[k] for k in shared) + "), averaged over the "
                          "corpora left out; linear heads only (run centring is exact for them)"}
        report(f"chosen for transfer: {len(search['folds'])} corpora, each left out in turn, "
               f"scored on {', '.join(labels[k] for k in shared)}")
    settings, history = search_settings(data, y_rec, len(labels), search["folds"], trials,
                                        max_layer, seed, report, copies, search["objective"],
                                        search["hidden"])
    logits = out_of_fold_logits(data, y_rec, len(labels), settings, folds, seed, copies)
    x, owner, durations = data.segments(tuple(settings["layers"]))
    served = calibration_rows(data, languages)
    fitted = served
    if transfer:
        # Calibrated where it is used, on corpora it never heard: the left-out corpus's logits.
        transfer_logits = out_of_fold_logits(data, y_rec, len(labels), settings,
                                             search["folds"], seed, copies)
        fitted = learnable_elsewhere(y_rec, corpus_code)
        temperature = fit_confidence_temperature(transfer_logits, owner, durations, y_rec,
                                                  fitted.astype(np.float64))
    elif task == "language":
        temperature = fit_temperature(logits, y_rec[owner])
    else:  # every corpus it trained on, each weighing the same
        fitted = np.ones(len(data.meta), bool)
        temperature = fit_confidence_temperature(logits, owner, durations, y_rec,
                                                 corpus_weights(data))
    rec = recording_means(softmax(logits, temperature), owner, durations, len(data.meta))
    metrics = {
        "split": f"out-of-fold over {len(folds)} speaker-disjoint folds of the training speakers",
        "recordings": int(len(rec)),
        "uar": uar(y_rec, rec.argmax(axis=1), len(labels)),
        "mean_corpus_uar": validation_score(y_rec, rec.argmax(axis=1), corpus_codes(data),
                                            len(labels)),
        "accuracy": float(np.mean(rec.argmax(axis=1) == y_rec)),
        "ece": float(expected_calibration_error(rec, y_rec)),
        "segment_ece": float(expected_calibration_error(softmax(logits, temperature),
                                                        y_rec[owner])),
        "temperature_fitted_on": int(fitted.sum()),
        "ece_where_fitted": float(expected_calibration_error(rec[served], y_rec[served])),
    }
    if "corpus" in data.meta:
        corpora = data.meta["corpus"].astype(str).to_numpy()
        metrics["ece_per_corpus"] = {
            c: float(expected_calibration_error(rec[corpora == c], y_rec[corpora == c]))
            for c in sorted(set(corpora))}
    report(f"validation: UAR {metrics['uar']:.3f}, accuracy {metrics['accuracy']:.3f}, "
           f"ECE {metrics['ece']:.3f}, temperature {temperature:.2f}")
    loco = None
    if transfer:
        loco = transfer_metrics(data, y_rec, labels, shared, softmax(transfer_logits, temperature),
                                owner, durations)
        report(f"leave one corpus out: UAR {loco['mean_uar']:.3f} ("
               + ", ".join(f"{c} {r['uar']:.3f}" for c, r in loco["corpora"].items()) + ")")
    switch = None
    if smooth_language:
        switch, switch_table = fit_switch_probability(
            softmax(logits, temperature), owner, y_rec, np.random.default_rng(seed))
        metrics["switch_probability"] = {"chosen": switch, "validation": switch_table}
        report(f"switch probability {switch} (segment accuracy on validation sequences: "
               f"{switch_table})")
    fitted_cascade = None
    if cascade:
        fitted_cascade = fit_language_cascade(
            data, softmax(logits, temperature), y_rec, labels, backbone, window_s, jobs, report)
    speaker_fit = None
    if task != "language":
        corpus = data.meta.get("corpus", pd.Series([""] * len(data.meta))).astype(str)
        speaker_fit = fit_speaker_adaptation(
            softmax(logits, temperature), owner, durations, y_rec, speakers,
            corpus.to_numpy(), served, len(labels),
            f"the training recordings it serves, out of fold over {len(folds)} speaker folds, "
            "each corpus adapted as one run", report)
    x, owner, durations, _ = training_rows(data, copies, tuple(settings["layers"]))
    y = y_rec[owner]
    weights = balanced_weights(y, len(labels), corpus_codes(data)[owner]) * durations / 3.0
    model = fit_head(x, y, weights, len(labels), settings, seed)
    run_centring = None
    if transfer:
        x, owner, durations = data.segments(tuple(settings["layers"]))
        mean_logits = np.average(model.predict(x, batch_size=256, verbose=0), axis=0,
                                 weights=durations)
        run_centring = RunCentring(
            tuple(float(v) for v in mean_logits), PRIOR_S,
            "the training recordings, each corpus centred on its own mean")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(output_dir / "model.keras")
    spec = ModelSpec(
        folder=output_dir, name=name, task=task, labels=tuple(labels),
        languages=tuple(languages), weights="model.keras", features=backbone.features,
        temperature=float(temperature),
        training={
            **(training_info or {}),
            "backbone": backbone.name,
            "backbone_backend": backend,
            "augmented_copies": int(len(copy_original)),
            "settings": jsonable(settings),
            "search": {"trials": trials, "sampler": "optuna TPE" if trials else None,
                       "objective": search["text"],
                       "history": history},
            "seed": seed,
        },
        metrics={"validation": metrics,
                 **({"leave_one_corpus_out": loco} if loco is not None else {})},
        backbone=BackboneInput(backbone.name, tuple(settings["layers"]), "stats",
                               backbone.pooled_width),
        switch_probability=switch,
        cascade=fitted_cascade,
        speaker_adaptation=speaker_fit,
        run_centring=run_centring,
    )
    spec = convert_to_litert(spec, required=False)
    write_model_folder(spec, head_card(spec))
    return spec


def train_on_corpora(task: str, corpora: list, output_dir: str | Path, *,
                     backbone: str | Path = "whisper-base", backend: str | None = None,
                     trials: int = 0, n_folds: int = 4, seed: int = 0,
                     languages: list[str] | None = None, window_s: float = 3.0,
                     cache_dir: Path | None = None, jobs: int | None = None,
                     cascade: bool = True,
                     copies: int | None = None,
                     overwrite: bool = False, report: Report = print) -> ModelSpec:
    """``annotate train TASK --corpus ... --architecture head``: a head on a backbone.

    Every recording of the corpora (but those of an official test split) is
    a training recording; validation is over speaker-disjoint folds.

    Args:
        backbone: A bundled backbone's name or a backbone folder.
        backend: How the backbone encodes (default: as ``annotate run`` would).
        copies: Augmented copies per training recording (default:
            :data:`annotate.training.copies.DEFAULT_COPIES` for the task),
            written beside the feature cache.
        cascade: For a language head on a backbone with Whisper's language
            step, fit the cascade too
            (:func:`annotate.training.calibration.fit_language_cascade`).
    """
    from annotate.errors import expected_one_of
    from annotate.labels import EMOTIONS, TASKS
    from annotate.modelling.backbone_folder import read_backbone_folder
    from annotate.modelling.inference import choose_backbone_backend
    from annotate.modelling.model_folder import bundled_models_dir
    from annotate.training.copies import DEFAULT_COPIES, augmented_copies
    from annotate.training.reference import reference_backbone
    from annotate.training.train import check_output_dir, model_languages

    if task not in TASKS:
        raise UsageError(expected_one_of("task", task, TASKS))
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    folder = Path(backbone)
    if not (folder / "backbone.json").is_file():
        folder = bundled_models_dir() / str(backbone)
    # Heads learn from the backbone's float states, whatever export a run reads.
    spec = reference_backbone(read_backbone_folder(folder), cache_dir)
    n_states = spec.litert.n_layers if spec.litert else spec.n_layers
    backend = choose_backbone_backend(spec, tuple(range(n_states + 1)), backend)
    frames = []
    for corpus in corpora:
        items = corpus.items.copy()
        items["corpus"] = corpus.name
        if task == "language":
            items["label"] = items["language"]
        frames.append(items[items["split"].fillna("") != "test"])
    items = pd.concat(frames, ignore_index=True)
    items = items[items["label"].notna()].reset_index(drop=True)
    if items.empty:
        raise UsageError("the corpora hold no labelled training recording")
    copies = DEFAULT_COPIES[task] if copies is None else int(copies)
    if copies:
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        report(f"{copies} augmented copies of each recording in {cache / 'augmented'}")
        items = pd.concat([items, augmented_copies(items, copies, cache / "augmented", seed)],
                          ignore_index=True)
    data = encode_items(items, spec, backend, window_s, cache_dir, jobs, report)
    present = set(data.meta["label"])
    labels = (tuple(e for e in EMOTIONS if e in present) if task == "emotion"
              else tuple(sorted(present)))
    if len(labels) < 2:
        raise UsageError(f"a {task} model needs 2 labels or more, the corpora hold {labels}")
    if output_dir.exists() and overwrite:
        import shutil

        shutil.rmtree(output_dir)
    return train_head(
        task, data, labels, model_languages(task, labels, data.meta, languages), spec, backend,
        output_dir, output_dir.name, trials=trials, n_folds=n_folds, seed=seed,
        training_info={"corpora": [{"name": c.name, "root": str(c.root)} for c in corpora],
                       "recordings": int((copy_sources(data.meta) == "").sum())},
        smooth_language=task == "language", report=report,
        cascade=task == "language" and cascade and spec.language is not None,
        window_s=window_s, jobs=jobs)
