"""Fitting the cascade: when the language head asks Whisper, and how the two are fused.

The fusion itself is :func:`annotate.modelling.posteriors.fuse_language`.

The head on the encoder's states is fast and sure of most segments; where it
is unsure (its top probability below a threshold), Whisper's own language
step, which has heard far more speakers and accents, is asked too, and the
two are fused: ``softmax(a * log p_head + b * log p_whisper)``, a logistic
fusion whose weights are fitted by log-likelihood on the validation
segments the threshold sends on (so the fused probabilities are calibrated
where they are used). The threshold trades accuracy against the cost of the
language step: it is the lowest one within a small tolerance of the best
validation accuracy (:func:`fit_cascade`). Then the context step
(:func:`fit_context`): a recording still unsure after the cascade is asked
once with Whisper's own context (its speech joined into one padded window),
and that answer fused into its segments. The settings live in the language model's ``model.json``
(:class:`annotate.modelling.model_folder.LanguageCascade`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotate.modelling.posteriors import apply_cascade, fuse_language

#: Thresholds the fit tries (top head probability below it: ask Whisper).
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
#: Each fusion weight the fit tries.
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(26))
#: The largest share of validation segments the chosen threshold may send to
#: Whisper's language step. Each ask is Whisper's last two blocks and its
#: decoder's first step, about what the encoder's first four cost: 0.2 is
#: what the cascade asked when it was made the default (0.175 of the
#: segments, about 5 % of the run, docs/benchmarks.md), so the step's cost
#: does not grow past that when a retrained head is less sure of itself.
CASCADE_BUDGET = 0.2


def fit_weights(head: np.ndarray, whisper: np.ndarray, truth: np.ndarray,
                grid: tuple[float, ...] = WEIGHTS) -> tuple[float, float]:
    """The fusion weights with the least negative log-likelihood of ``truth`` (a grid search).

    Two parameters on a fine grid: exact enough, and no optimiser to tune.
    """
    best, chosen = np.inf, (1.0, 0.0)
    rows = np.arange(len(truth))
    for a in grid:
        for b in grid:
            if a == 0 and b == 0:
                continue
            p = fuse_language(head, whisper, a, b)[rows, truth]
            nll = -np.mean(np.log(np.maximum(p, 1e-12)))
            if nll < best:
                best, chosen = nll, (float(a), float(b))
    return chosen


@dataclass(frozen=True)
class CascadeFit:
    """What :func:`fit_cascade` chose, and the validation table it chose it from."""

    threshold: float
    head_weight: float
    whisper_weight: float
    #: One row per threshold tried: its weights, the share of segments sent
    #: to Whisper, and the per-recording accuracy of each group (and their mean).
    table: list[dict]


def fit_cascade(head: np.ndarray, whisper: np.ndarray, truth: np.ndarray,
                owner: np.ndarray, durations: np.ndarray, group: np.ndarray,
                tolerance: float = 0.002, thresholds=THRESHOLDS,
                min_asked: int = 20, budget: float = CASCADE_BUDGET) -> CascadeFit:
    """Fusion weights and threshold on validation segments.

    For each threshold, the weights are fitted on the segments it sends to
    Whisper (those the fusion will see); the threshold chosen is the lowest
    whose mean per-recording accuracy over the groups is within
    ``tolerance`` of the best: the cheapest that is as good.

    Args:
        head, whisper: Calibrated probabilities of each segment [shape=(n, k)]
            (the head's out of fold).
        truth: Each segment's language index [shape=(n,)].
        owner: Each segment's recording [shape=(n,)].
        durations: Each segment's duration in seconds [shape=(n,)].
        group: Each recording's set (corpus), by recording index: accuracy
            is averaged per group, every group weighing the same.
        tolerance: How far below the best accuracy the cheaper threshold may be.
        thresholds: The thresholds tried, ascending.
        min_asked: Fewer segments sent than this: no fusion weights are fitted
            (the head's answer stands).
        budget: The largest share of segments the chosen threshold may send.
    """
    group = np.asarray(group)
    n_recordings = int(owner.max()) + 1 if len(owner) else 0
    rec_truth = np.zeros(n_recordings, np.int64)
    rec_truth[owner] = truth
    seen = np.zeros(n_recordings, bool)
    seen[owner] = True
    groups = sorted(set(group[seen]))
    table = []
    for threshold in thresholds:
        asked = head.max(axis=1) < threshold
        a, b = (fit_weights(head[asked], whisper[asked], truth[asked])
                if asked.sum() >= min_asked else (1.0, 0.0))
        probs = apply_cascade(head, whisper, threshold, a, b)
        rec = np.zeros((n_recordings, head.shape[1]))
        np.add.at(rec, owner, probs * durations[:, None])
        right = rec.argmax(axis=1) == rec_truth
        accuracy = {str(g): float(right[seen & (group == g)].mean()) for g in groups}
        table.append({"threshold": float(threshold), "head_weight": a, "whisper_weight": b,
                      "asked": float(asked.mean()),
                      "mean_accuracy": float(np.mean(list(accuracy.values()))), **accuracy})
    affordable = [row for row in table if row["asked"] <= budget] or table[:1]
    best = max(row["mean_accuracy"] for row in affordable)
    chosen = next(row for row in affordable if row["mean_accuracy"] >= best - tolerance)
    return CascadeFit(chosen["threshold"], chosen["head_weight"], chosen["whisper_weight"], table)


#: Thresholds the context fit tries (a recording's top probability below it:
#: ask Whisper once with its context).
CONTEXT_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
#: The largest share of validation recordings the chosen threshold may ask.
#: Each ask was one 30 s encoder pass when this was chosen (about what a minute
#: of audio costs the rest of the run; a 10 s window costs a third of it), so
#: this bounds the step's cost: 5 % kept the default run within 15 % of the
#: run without it on the benchmark corpora (concatenated clips of every corpus,
#: switching language within files), where 8 % did not.
CONTEXT_BUDGET = 0.05
#: The same bound for Whisper's identification alone (``--language-id
#: whisper``, ``scripts/fit_language_id.py``). Its own answer on segments of
#: a few seconds is far weaker than the cascade's (0.941 per validation
#: recording, mean over six sets), so the context pays on many more
#: recordings: 0.957 with 4 % asked, 0.965 with 9 %, 0.968 with 15 %. A 30 s
#: window costs about what 8 segments do in that mode (a 10 s one, below,
#: about a third of that), so the step adds most to corpora of short clips
#: (docs/benchmarks.md); the mode serves languages the head does not know,
#: where the label comes before the speed.
WHISPER_CONTEXT_BUDGET = 0.15
#: The context step asks on windows of 10 s (log-mel frames), not Whisper's
#: 30 s, in the cascade and in Whisper alone: on validation recordings with up
#: to 5 s of speech, Whisper alone's fused answer at the thresholds within its
#: budget was the same with 10 s as with 30 s (0.954 / 0.961 against 0.953 /
#: 0.961; 5 s: 0.945 / 0.948), for about a third of the encoder's work
#: (docs/accuracy.md). A stretch ends where its speech fills the window, so
#: longer speech is asked 10 s at a time. The fit scripts write it into the
#: settings they fit (a model that names none asks on 30 s).
CONTEXT_WINDOW_FRAMES = 1000


@dataclass(frozen=True)
class ContextFit:
    """What :func:`fit_context` chose, and the validation table it chose it from."""

    threshold: float
    weight: float
    #: One row per threshold tried: its weight, the share of recordings asked,
    #: and the per-recording accuracy of each group (and their mean).
    table: list[dict]

    def report(self, groups: list[str]) -> str:
        """The table as text, a row per threshold and a column per group, then the choice."""
        lines = [f"{'context':>9} {'asked':>6} {'weight':>6} {'mean':>6} "
                 + " ".join(f"{g[:11]:>11}" for g in groups)]
        lines += [f"{row['threshold']:>9} {row['asked']:>6.3f} {row['weight']:>6} "
                  f"{row['mean_accuracy']:>6.3f} " + " ".join(f"{row[g]:>11.3f}" for g in groups)
                  for row in self.table]
        lines.append(f"chosen: context threshold {self.threshold}, weight {self.weight}")
        return "\n".join(lines)


def fit_context(probs: np.ndarray, context: np.ndarray, truth: np.ndarray, owner: np.ndarray,
                durations: np.ndarray, group: np.ndarray, tolerance: float = 0.002,
                thresholds=CONTEXT_THRESHOLDS, min_asked: int = 10,
                budget: float = CONTEXT_BUDGET) -> ContextFit:
    """When a recording is asked with Whisper's context, and the context's weight.

    Each recording whose duration-weighted top probability is below the
    threshold has its segments fused with its context probabilities:
    ``softmax(log p + w * log p_context)``; ``w`` is fitted by
    log-likelihood on the segments of the recordings the threshold asks
    for. Of the thresholds asking at most ``budget`` of the recordings, the
    one chosen is the lowest whose mean per-recording accuracy over the
    groups is within ``tolerance`` of the best of them: each asked
    recording costs one encoder pass on its window.

    Args:
        probs: Each segment's probabilities after the cascade [shape=(n, k)].
        context: Each recording's context probabilities [shape=(n_recordings, k)];
            rows that no threshold asks for may be NaN.
        truth: Each segment's language index [shape=(n,)].
        owner: Each segment's recording [shape=(n,)].
        durations: Each segment's seconds [shape=(n,)].
        group: Each recording's set, by recording index.
        tolerance: How far below the best accuracy the cheaper threshold may be.
        thresholds: The thresholds tried, ascending (every one goes into the
            table, those over the budget too).
        min_asked: Fewer recordings asked than this: the weight stays 0.
        budget: The largest share of recordings the chosen threshold may ask.
    """
    from annotate.modelling.posteriors import recording_means

    group = np.asarray(group)
    n_recordings = len(context)
    rec_truth = np.zeros(n_recordings, np.int64)
    rec_truth[owner] = truth
    seen = np.zeros(n_recordings, bool)
    seen[owner] = True
    top = recording_means(probs, owner, durations, n_recordings).max(axis=1)
    groups = sorted(set(group[seen]))
    table = []
    for threshold in thresholds:
        asked = seen & (top < threshold)
        rows = asked[owner]
        weight = 0.0
        if asked.sum() >= min_asked:
            weight = _fit_context_weight(probs[rows], context[owner[rows]], truth[rows])
        fused = np.array(probs, np.float64)
        if rows.any():
            fused[rows] = fuse_language(fused[rows], context[owner[rows]], 1.0, weight)
        right = recording_means(fused, owner, durations, n_recordings).argmax(axis=1) == rec_truth
        accuracy = {str(g): float(right[seen & (group == g)].mean()) for g in groups}
        table.append({"threshold": float(threshold), "weight": weight,
                      "asked": float(asked.sum() / max(seen.sum(), 1)),
                      "mean_accuracy": float(np.mean(list(accuracy.values()))), **accuracy})
    return ContextFit(*choose_context(table, tolerance, budget), table)


def choose_context(table: list[dict], tolerance: float = 0.002,
                   budget: float = CONTEXT_BUDGET) -> tuple[float, float]:
    """The threshold and weight :func:`fit_context` chooses from its validation table."""
    affordable = [row for row in table if row["asked"] <= budget] or table[:1]
    best = max(row["mean_accuracy"] for row in affordable)
    chosen = next(row for row in affordable if row["mean_accuracy"] >= best - tolerance)
    return chosen["threshold"], chosen["weight"]


def _fit_context_weight(probs: np.ndarray, context: np.ndarray, truth: np.ndarray) -> float:
    """The context weight with the least negative log-likelihood of ``truth`` (a grid)."""
    rows = np.arange(len(truth))
    losses = [-np.mean(np.log(np.maximum(fuse_language(probs, context, 1.0, w)[rows, truth],
                                         1e-12))) for w in WEIGHTS]
    return float(WEIGHTS[int(np.argmin(losses))])
