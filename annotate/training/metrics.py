"""The measures that training and evaluation share: calibration, recall, per-recording scores.

:mod:`annotate.training.train` reports them on its validation split and
:mod:`annotate.training.evaluate` on held-out speakers; both import them from here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotate.modelling.posteriors import recording_mean, uar
from annotate.training.training_data import Recordings

#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, true: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top label (Guo et al., 2017).

    Args:
        probs: np.ndarray [shape=(n, n_labels)], rows summing to 1.
        true: np.ndarray [shape=(n,), int] label indices.
        bins: Equal-width confidence bins over [0, 1].

    Returns:
        Sum over bins of |accuracy - mean confidence| weighted by the bin's
        share of examples; 0.0 for no examples.
    """
    if not len(probs):
        return 0.0
    return top_label_ece(probs.max(axis=1), probs.argmax(axis=1) == true, bins)


def top_label_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """:func:`expected_calibration_error` from each top probability and whether it was right."""
    if not len(confidence):
        return 0.0
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def ece_if_calibrated(confidence: np.ndarray, bins: int = ECE_BINS, draws: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """What a perfectly calibrated model with these confidences would score, on this many examples.

    The binned ECE is biased upwards on a small set: each bin's accuracy is
    a sample. Each draw marks every example's top label right with
    probability its confidence (a model calibrated by construction) and
    scores it; a measured ECE within the draws' range cannot be told from
    calibration on a set of this size.

    Returns:
        The draws' mean ECE and their 95th percentile (0.0, 0.0 for no examples).
    """
    confidence = np.asarray(confidence, np.float64)
    if not len(confidence):
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    scores = [top_label_ece(confidence, rng.random(len(confidence)) < confidence, bins)
              for _ in range(draws)]
    return float(np.mean(scores)), float(np.percentile(scores, 95))


def recall_per_label(true: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    """Recall of each label, NaN where a label has no example.

    Returns:
        np.ndarray [shape=(n_labels,), float64].
    """
    support = np.bincount(true, minlength=n_labels)
    hits = np.bincount(true[predicted == true], minlength=n_labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / np.maximum(support, 1), np.nan)


def unweighted_average_recall(true: np.ndarray, scores: np.ndarray) -> float:
    """UAR (macro recall) over the labels present in ``true``; ``scores`` may be logits."""
    if not len(true):
        return float("nan")
    return uar(true, scores.argmax(axis=1), scores.shape[1])


def negative_log_likelihood(logits: np.ndarray, true: np.ndarray,
                            weights: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of the true labels under ``softmax(logits)`` (weighted)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.average(log_probs[np.arange(len(true)), true], weights=weights))


def classification_metrics(true: np.ndarray, probs: np.ndarray, labels) -> dict:
    """Accuracy, UAR, ECE, recall per label and the confusion matrix.

    Args:
        true: np.ndarray [shape=(n,), int] label indices.
        probs: np.ndarray [shape=(n, n_labels)] probabilities.
        labels: Names of the label indices.

    Returns:
        ``{"n", "accuracy", "uar", "ece", "per_class_recall": {label: recall
        or None}, "support": {label: n}, "confusion": {"labels", "matrix"}}``;
        the matrix has one row per true label and one column per predicted
        label. UAR is the mean recall over the labels present.
    """
    labels = list(labels)
    true = np.asarray(true, np.int64)
    probs = np.asarray(probs, np.float64).reshape(len(true), len(labels))
    predicted = probs.argmax(axis=1)
    matrix = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(matrix, (true, predicted), 1)
    recalls = recall_per_label(true, predicted, len(labels))
    support = np.bincount(true, minlength=len(labels))
    return {
        "n": int(len(true)),
        "accuracy": float((predicted == true).mean()) if len(true) else float("nan"),
        "uar": float(np.nanmean(recalls)) if len(true) else float("nan"),
        "ece": expected_calibration_error(probs, true),
        "per_class_recall": {
            label: None if np.isnan(r) else float(r) for label, r in zip(labels, recalls)
        },
        "support": {label: int(s) for label, s in zip(labels, support)},
        "confusion": {"labels": labels, "matrix": matrix.tolist()},
    }


def recording_probabilities(
    recordings: Recordings, segment_probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each recording's duration-weighted mean of its speech segments' probabilities.

    Args:
        recordings: Whole recordings; ``segment_probs`` follows the order of
            ``recordings.stacked()``.
        segment_probs: np.ndarray [shape=(n_segments, n_labels)].

    Returns:
        np.ndarray [shape=(n_recordings, n_labels), float64] (zeros for a
        recording without speech) and np.ndarray [shape=(n_recordings,),
        bool]: which recordings hold speech and so have a prediction.
    """
    n_labels = segment_probs.shape[1] if segment_probs.ndim == 2 else 0
    out = np.zeros((len(recordings), n_labels), np.float64)
    scored = np.zeros(len(recordings), bool)
    start = 0
    for i in range(len(recordings)):
        count = len(recordings.features[i])
        if count:
            out[i] = recording_mean(segment_probs[start : start + count],
                                    recordings.speech_durations(i))
            scored[i] = True
        start += count
    return out, scored


def score_recordings(labels, meta: pd.DataFrame, rec_probs: np.ndarray, scored: np.ndarray,
                     segment_probs: np.ndarray, owner: np.ndarray) -> dict:
    """An evaluation's figures from recording probabilities.

    Per recording (``scored``: those with speech), per segment, per speaker,
    and each scored recording's prediction.
    """
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
