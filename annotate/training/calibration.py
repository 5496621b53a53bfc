"""Calibrating what a model outputs: temperatures, the language smoothing, the cascade, speakers.

The temperature of a network's softmax (:func:`fit_temperature`), fitted on
validation logits, and for a head on its out-of-fold logits: a language
head's by the segments' log-likelihood, an emotion head's by its
recordings' top-label confidence (:func:`fit_confidence_temperature`). A
language head's switch probability for smoothing along recordings
(:func:`fit_switch_probability`) and, on a backbone with Whisper's language
step, when to ask that step and how to fuse the two
(:func:`fit_language_cascade`, from :func:`whisper_language_probs`). An
emotion head's temperature for ``annotate run --speakers``
(:func:`fit_speaker_adaptation`). The arithmetic they fit lives in
:mod:`annotate.modelling.posteriors`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from annotate.errors import InputError
from annotate.modelling.backbone_folder import BackboneSpec
from annotate.modelling.posteriors import recording_means, softmax, uar
from annotate.training.encoding import EncodedRecordings, Report, corpus_codes
from annotate.training.metrics import negative_log_likelihood

#: Temperatures searched when calibrating (log-spaced), then refined. Bounded,
#: because a few perfectly separated validation recordings would otherwise
#: drive T towards 0 (and the probabilities to 0 or 1).
TEMPERATURE_RANGE = (0.2, 10.0)


def fit_temperature(logits: np.ndarray, true: np.ndarray,
                    weights: np.ndarray | None = None) -> float:
    """The temperature minimising the negative log-likelihood of ``softmax(logits / T)``.

    Args:
        logits: np.ndarray [shape=(n, n_labels)].
        true: np.ndarray [shape=(n,), int] label indices.
        weights: np.ndarray [shape=(n,)]: each row's weight (default: the same).

    Returns:
        T > 0 (:func:`minimise_over_temperature`).
    """
    logits = np.asarray(logits, np.float64)
    if not len(logits):
        return 1.0
    return minimise_over_temperature(
        lambda t: negative_log_likelihood(logits / t, true, weights))


def fit_confidence_temperature(logits: np.ndarray, owner: np.ndarray, durations: np.ndarray,
                               true: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The temperature whose recordings' top-label confidence is best calibrated.

    What an emotion head reports, and what its ECE scores, is the top label
    of each recording with its probability (the duration-weighted mean of
    its segments'). The temperature minimising the segments' log-likelihood
    calibrates every label's probability instead, and on validation
    speakers it left the top label underconfident (docs/accuracy.md). This
    one minimises the log loss of "the top label is right" under that
    probability: a proper score of the confidence ECE bins, with no bins.

    Args:
        logits: np.ndarray [shape=(n_segments, n_labels)].
        owner, durations: Each segment's recording and seconds.
        true: np.ndarray [shape=(n_recordings,), int] each recording's label.
        weights: np.ndarray [shape=(n_recordings,)]: each recording's weight.

    Returns:
        T > 0 (:func:`minimise_over_temperature`).
    """
    logits = np.asarray(logits, np.float64)
    if not len(logits):
        return 1.0
    present = np.bincount(owner, minlength=len(true)) > 0

    def loss(temperature: float) -> float:
        rec = recording_means(softmax(logits, temperature), owner, durations, len(true))[present]
        confidence = np.clip(rec.max(axis=1), 1e-12, 1 - 1e-12)
        right = rec.argmax(axis=1) == true[present]
        return float(-np.average(np.where(right, np.log(confidence), np.log1p(-confidence)),
                                 weights=None if weights is None else weights[present]))

    return minimise_over_temperature(loss)


def minimise_over_temperature(loss) -> float:
    """The temperature in :data:`TEMPERATURE_RANGE` minimising ``loss(T)``.

    A log-spaced grid search, refined by a golden-section search around the
    best grid point; rounded to six decimals.
    """
    grid = np.linspace(math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1]), 121)
    losses = [loss(math.exp(g)) for g in grid]
    best = int(np.argmin(losses))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(math.exp(a)) < loss(math.exp(b)):
            high = b
        else:
            low = a
    return float(round(math.exp((low + high) / 2), 6))


def calibration_rows(data: EncodedRecordings, languages: tuple[str, ...]) -> np.ndarray:
    """The recordings a head serves: those in its languages.

    What the per-speaker temperature is fitted on. A cross-lingual head
    (``*``), a language head, or recordings without a language column: all of them.
    """
    every = np.ones(len(data.meta), bool)
    if "*" in languages or "language" not in data.meta:
        return every
    served = data.meta["language"].isin(languages).to_numpy()
    return served if served.any() else every


def corpus_weights(data: EncodedRecordings) -> np.ndarray:
    """Each recording's weight in an emotion head's temperature: every corpus counts the same.

    An emotion head's temperature is fitted on every corpus it trained on,
    not only the one it serves. Out of fold, a head is weaker on a corpus of
    few speakers than it is once trained on all of them: emotion-it's folds
    leave one of EMOVO's three training actors out, and score EMOVO at 0.46
    (accuracy) against 0.66 on its held-out actor. A temperature fitted on
    EMOVO alone (3.7) flattened the final head's probabilities (ECE 0.234 on
    the held-out actor); over the three corpora, each weighing the same, it
    is 2.1 (docs/accuracy.md).
    """
    codes = corpus_codes(data)
    counts = np.bincount(codes)
    return len(codes) / (len(counts) * counts[codes])


#: Switch probabilities tried for the language smoothing.
SWITCH_GRID = (0.02, 0.05, 0.1, 0.2, 0.35)


def fit_switch_probability(probs: np.ndarray, owner: np.ndarray, y_rec: np.ndarray,
                           rng: np.random.Generator, sequences: int = 400
                           ) -> tuple[float, dict[str, float]]:
    """The switch probability that best labels validation segments of recordings that switch.

    Out-of-fold segment posteriors of validation recordings are strung into
    sequences of 2-4 runs of one language each (2-6 recordings a run, as in
    a recording that switches language a few times); each probability of
    :data:`SWITCH_GRID` smooths them, and the one with the best segment
    accuracy wins (no smoothing is the baseline, written as ``"none"``).
    """
    from annotate.modelling.posteriors import smooth_language

    by_label: dict[int, list[int]] = {}
    for r, label in enumerate(y_rec):
        by_label.setdefault(int(label), []).append(r)
    segments_of = {r: np.flatnonzero(owner == r) for r in range(len(y_rec))}
    languages = sorted(by_label)
    built = []
    for _ in range(sequences):
        runs = int(rng.integers(2, 5))
        order = [int(rng.choice(languages))]
        while len(order) < runs:
            order.append(int(rng.choice([x for x in languages if x != order[-1]])))
        rows, truth = [], []
        for label in order:
            for r in rng.choice(by_label[label], size=int(rng.integers(2, 7))):
                rows.extend(segments_of[int(r)])
                truth.extend([label] * len(segments_of[int(r)]))
        built.append((np.asarray(rows), np.asarray(truth)))
    scores = {}
    for p in (None, *SWITCH_GRID):
        hits = total = 0
        for rows, truth in built:
            smoothed = probs[rows] if p is None else smooth_language(probs[rows], p)
            hits += int((smoothed.argmax(axis=1) == truth).sum())
            total += len(truth)
        scores["none" if p is None else str(p)] = round(hits / total, 4)
    best = max(SWITCH_GRID, key=lambda p: scores[str(p)])
    return float(best), scores


#: Temperatures :func:`fit_speaker_adaptation` tries.
SPEAKER_TEMPERATURES = tuple(round(0.5 + 0.05 * i, 2) for i in range(31))


def fit_speaker_adaptation(probs: np.ndarray, owner: np.ndarray, durations: np.ndarray,
                           y_rec: np.ndarray, speakers: np.ndarray, corpus: np.ndarray,
                           served: np.ndarray, n_labels: int, fitted_on: str,
                           report: Report = print):
    """An emotion head's temperature for ``annotate run --speakers``, from validation speakers.

    Each corpus's served recordings are adapted as one run (its speakers
    against each other, :func:`annotate.modelling.posteriors.adapt_to_speakers`);
    the temperature with the least negative log-likelihood of the adapted
    segments' labels wins.

    Args:
        probs: Calibrated out-of-fold probabilities of each segment [shape=(n, k)].
        owner, durations: Each segment's recording and duration.
        y_rec, speakers, corpus, served: Per recording: its label, speaker,
            corpus, and whether the head serves it (its languages).
        n_labels: Labels of the head.
        fitted_on: What the recordings are, for the model folder.

    Returns:
        A :class:`annotate.modelling.model_folder.SpeakerAdaptation`, or None
        (reported) when no corpus has two speakers with enough speech.
    """
    from annotate.modelling.model_folder import SpeakerAdaptation
    from annotate.modelling.posteriors import adapt_to_speakers
    from annotate.training.metrics import expected_calibration_error

    corpora = sorted(set(corpus[served]))

    def adapted(temperature: float) -> tuple[np.ndarray, np.ndarray]:
        out, mask = probs.copy(), np.zeros(len(probs), bool)
        for c in corpora:
            rows = served[owner] & (corpus[owner] == c)
            out[rows], mask[rows] = adapt_to_speakers(probs[rows], speakers[owner][rows],
                                                      durations[rows], temperature)
        return out, mask

    truth = y_rec[owner]
    if not adapted(1.0)[1].any():
        report("no per-speaker temperature: no corpus has two speakers with enough speech")
        return None
    nll = {}
    for temperature in SPEAKER_TEMPERATURES:
        out, mask = adapted(temperature)
        nll[temperature] = float(-np.mean(np.log(np.maximum(out[mask, truth[mask]], 1e-12))))
    best = min(nll, key=nll.get)
    out, _ = adapted(best)
    plain = recording_means(probs, owner, durations, len(y_rec))
    adapt = recording_means(out, owner, durations, len(y_rec))
    table = {}
    for c in corpora:
        recs = np.flatnonzero(served & (corpus == c))
        table[c] = {"recordings": int(len(recs)), "speakers": int(len(set(speakers[recs]))),
                    "uar_plain": uar(y_rec[recs], plain[recs].argmax(axis=1), n_labels),
                    "uar_adapted": uar(y_rec[recs], adapt[recs].argmax(axis=1), n_labels),
                    "ece_plain": float(expected_calibration_error(plain[recs], y_rec[recs])),
                    "ece_adapted": float(expected_calibration_error(adapt[recs], y_rec[recs]))}
        r = table[c]
        report(f"per speaker on {c} ({r['speakers']} speakers, {r['recordings']} recordings): "
               f"UAR {r['uar_plain']:.3f} -> {r['uar_adapted']:.3f}, ECE {r['ece_plain']:.3f} "
               f"-> {r['ece_adapted']:.3f} at temperature {best}")
    return SpeakerAdaptation(best, fitted_on=fitted_on,
                             validation={"corpora": table,
                                         "temperatures": {str(t): v for t, v in nll.items()}})


def whisper_language_logits(backbone: BackboneSpec, items: pd.DataFrame, window_s: float = 3.0,
                            jobs: int | None = None) -> tuple[np.ndarray, pd.DataFrame, list]:
    """Whisper's language logits of every speech segment of ``items``, cut as ``annotate run`` cuts.

    On LiteRT: the backbone's ``model.tflite`` then ``language.tflite``.

    Returns:
        Logits [shape=(n_segments, 99)], one row of ``items`` per segment
        (its recording's), and the recordings that could not be read.
    """
    from annotate.backbone.runtime import Backbone
    from annotate.training.training_data import load_recordings

    params = dataclasses.replace(backbone.features, segment_s=window_s)
    recordings, failures = load_recordings(items, params, jobs)
    features, owner = recordings.stacked(params)
    durations = recordings.segment_durations()
    runner = Backbone(backbone, (0,), "litert", params.n_frames, language=True)
    _, logits = runner.encode([features], params.segment_frames(durations))
    return logits, recordings.meta.iloc[owner].reset_index(drop=True), failures


def context_language_probs(runner, recordings, asked: np.ndarray, columns: list[int],
                           temperature: float, window_frames: int) -> np.ndarray:
    """Whisper's calibrated probabilities with its context, for the recordings ``asked``.

    Each asked recording's speech segments are joined and padded to one
    window of ``window_frames`` log-mel frames, as a run asks a stretch
    (:func:`annotate.features.whisper_context`; speech past the window is
    dropped: a run would ask it as another stretch), and put to
    ``runner.context_languages`` a few windows a call, so that every lane
    has work.

    Args:
        runner: A :class:`annotate.backbone.runtime.Backbone` (its context step
            loads on the first call).
        recordings: What :func:`annotate.training.training_data.load_recordings` read.
        asked: Indices of the recordings to ask.
        columns: Whisper's language tokens kept, in the order of the result's columns.
        temperature: Whisper's fitted temperature.
        window_frames: The window's length.

    Returns:
        np.ndarray [shape=(len(recordings), len(columns))]: NaN for the rows not asked.
    """
    from annotate.features import whisper_context
    from annotate.modelling.language_source import CONTEXT_WINDOWS_A_CALL

    params = runner.spec.features
    out = np.full((len(recordings), len(columns)), np.nan)
    asked = [k for k in asked if len(recordings.speech_durations(k))]
    for first in range(0, len(asked), CONTEXT_WINDOWS_A_CALL):
        batch = asked[first : first + CONTEXT_WINDOWS_A_CALL]
        windows = [whisper_context(
            [row[:n] for row, n in zip(recordings.features[k],
                                       params.segment_frames(recordings.speech_durations(k)),
                                       strict=True)], window_frames) for k in batch]
        logits = runner.context_languages(windows)[:, columns].astype(np.float64)
        out[batch] = softmax(logits, temperature)
    return out


def whisper_language_probs(backbone: BackboneSpec, data: EncodedRecordings,
                           labels: tuple[str, ...], window_s: float,
                           jobs: int | None = None) -> np.ndarray:
    """Whisper's calibrated probabilities of ``labels`` for each speech segment of ``data``.

    The recordings are read again (``data`` holds pooled states only) and cut
    as they were when encoded; the rows are in the order of ``data.segments``.

    Raises:
        InputError: A recording could not be read again, or gave other segments.
    """
    from annotate.labels import WHISPER_LANGUAGES

    _, owner, _ = data.segments((0,))
    logits, rows, failures = whisper_language_logits(backbone, data.meta, window_s, jobs)
    paths = data.meta["path"].astype(str).to_numpy()[owner]
    if failures or len(rows) != len(owner) or (rows["path"].astype(str).to_numpy() != paths).any():
        raise InputError("the recordings read differently than when they were encoded "
                         f"({len(rows)} segments for Whisper, {len(owner)} encoded)")
    tokens = [WHISPER_LANGUAGES.index(label) for label in labels]
    return softmax(logits[:, tokens].astype(np.float64), backbone.language.temperature)


def fit_language_cascade(data: EncodedRecordings, head: np.ndarray, y_rec: np.ndarray,
                         labels: tuple[str, ...], backbone: BackboneSpec, window_s: float,
                         jobs: int | None, report: Report = print):
    """The language cascade of a head, from its calibrated out-of-fold probabilities.

    Whisper's language step scores every speech segment of ``data`` (the
    recordings are read again: the cache holds pooled states only), and
    :func:`annotate.modelling.language_fusion.fit_cascade` picks the
    threshold and weights, every corpus weighing the same.

    Returns:
        A :class:`annotate.modelling.model_folder.LanguageCascade`, or None
        (reported) where it cannot be fitted: no language step in the
        backbone, or labels that are not Whisper's codes.
    """
    from annotate.labels import WHISPER_LANGUAGES
    from annotate.modelling.language_fusion import fit_cascade
    from annotate.modelling.model_folder import LanguageCascade

    if backbone.language is None or backbone.language_problem() is not None:
        report(f"no cascade: {backbone.name} has no usable language step (language.tflite)")
        return None
    unknown = [label for label in labels if label not in WHISPER_LANGUAGES]
    if unknown:
        report(f"no cascade: Whisper has no code {', '.join(unknown)}")
        return None
    _, owner, durations = data.segments((0,))
    report(f"cascade: Whisper's language step on {len(owner)} segments")
    try:
        whisper = whisper_language_probs(backbone, data, labels, window_s, jobs)
    except InputError as error:
        report(f"no cascade: {error}")
        return None
    group = data.meta.get("corpus", pd.Series([""] * len(data.meta))).astype(str).to_numpy()
    fit = fit_cascade(head, whisper, y_rec[owner], owner, durations, group)
    chosen = next(row for row in fit.table if row["threshold"] == fit.threshold)
    alone = fit.table[0]
    report(f"cascade: threshold {fit.threshold}, weights {fit.head_weight} / "
           f"{fit.whisper_weight}, {chosen['asked']:.1%} of segments asked; validation mean "
           f"accuracy {alone['mean_accuracy']:.3f} (head alone) -> {chosen['mean_accuracy']:.3f}")
    if fit.threshold == 0.0:
        return None
    return LanguageCascade(
        fit.threshold, fit.head_weight, fit.whisper_weight,
        fitted_on=(f"speech segments of {len(data.meta)} training recordings, head logits out "
                   "of fold (annotate train)"),
        validation={"per_recording_accuracy": fit.table, "asked": chosen["asked"]})
