"""Matplotlib figures of aggregated results, shared by the HTML report and the app.

Every function takes data that is already aggregated (shares, counts, one
recording's segments) and returns a :class:`matplotlib.figure.Figure` built
without pyplot, so no global state and no GUI backend is involved: figures
render with Agg, in any thread (Streamlit runs scripts in threads).
"""

from __future__ import annotations

import base64
import functools
import io
import itertools

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator, PercentFormatter

from annotate.features import FeatureParams
from annotate.labels import EMOTIONS, LANGUAGES

INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
NO_SPEECH = "#eef0f2"

#: One colour per emotion, fixed so that every figure and table agrees.
EMOTION_COLOURS: dict[str, str] = {
    "neutral": "#9aa5b1",
    "calm": "#8cc5e3",
    "happiness": "#f2b705",
    "sadness": "#3e6fb0",
    "anger": "#d1495b",
    "fear": "#7b4fa0",
    "disgust": "#5b8c3a",
    "surprise": "#f28e2b",
    "boredom": "#b9a47f",
}
_LANGUAGE_COLOURS = dict(zip(LANGUAGES, ("#4e79a7", "#e15759", "#59a14f", "#edc948")))
_SPARE_COLOURS = ("#76b7b2", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#af7aa1")

#: Dynamic range of spectrograms: 60 dB, in natural-log power units (ln 10**6).
SPECTROGRAM_RANGE = float(np.log(1e6))
#: Most bars per lane of a timeline (a 9-inch figure is about 1300 pixels wide).
TIMELINE_BINS = 1000

_RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 9,
    "axes.edgecolor": GRID,
    "axes.labelcolor": INK,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "xtick.color": MUTED,
    "ytick.color": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def colour_for(label: str, palette: dict[str, str]) -> str:
    """The fixed colour of a label; labels outside the palette get spare colours in order."""
    if label not in palette:
        spares = [c for c in _SPARE_COLOURS if c not in palette.values()] or list(_SPARE_COLOURS)
        palette[label] = spares[len(palette) % len(spares)]
    return palette[label]


def language_colour(code: str) -> str:
    """The colour of a language code."""
    return colour_for(code, _LANGUAGE_COLOURS)


def emotion_colour(label: str) -> str:
    """The colour of an emotion label."""
    return colour_for(label, EMOTION_COLOURS)


def _themed(build):
    """Run a figure builder under the house style (rc settings are read as artists are made)."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return build(*args, **kwargs)

    return wrapper


def _figure(width_in: float, height_in: float, **subplots) -> tuple[Figure, object]:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: never a GUI backend, whatever pyplot was set to
    return fig, fig.subplots(**subplots)


def _style(ax) -> None:
    for name, value in _RC.items():
        if name.startswith("axes.spines."):
            ax.spines[name.rsplit(".", 1)[1]].set_visible(value)
    ax.tick_params(colors=MUTED, labelcolor=INK, length=0)
    ax.set_axisbelow(True)


def png_bytes(fig: Figure, dpi: int = 144) -> bytes:
    """The figure as PNG (Agg), without metadata: nothing in it names a website."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None},
                    facecolor="white")
    return buffer.getvalue()


def png_base64(fig: Figure, dpi: int = 144) -> str:
    """The figure as base64 PNG, for a ``data:`` URI."""
    return base64.b64encode(png_bytes(fig, dpi)).decode("ascii")


def format_time(seconds: float, span_s: float) -> str:
    """``ss.s`` for short spans, ``m:ss`` up to an hour, ``h:mm:ss`` beyond."""
    if span_s < 60:
        return f"{seconds:.0f}s" if float(seconds).is_integer() else f"{seconds:.1f}s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if span_s >= 3600 else f"{minutes}:{secs:02d}"


#: Tick spacings for time axes, in seconds: round numbers of seconds, minutes, hours.
_TIME_STEPS_S = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200,
                 10800, 21600, 43200, 86400)


def _time_axis(axis, span_s: float, max_ticks: int = 8) -> None:
    """Ticks at round times (every 10 s, 5 min, 1 h, ...) labelled by :func:`format_time`."""
    step = next((s for s in _TIME_STEPS_S if span_s / s <= max_ticks), _TIME_STEPS_S[-1])
    axis.set_major_locator(MultipleLocator(step))
    axis.set_major_formatter(FuncFormatter(lambda x, _: format_time(x, span_s)))


@_themed
def share_bars(shares: dict[str, pd.Series], colour=language_colour) -> Figure:
    """Horizontal 100 % stacked bars, one per entry (e.g. "by speech time", "by recording").

    Args:
        shares: ``{bar name: Series of label -> share}`` with shares summing to 1.
        colour: Label -> colour.
    """
    labels = list(dict.fromkeys(itertools.chain.from_iterable(s.index for s in shares.values())))
    fig, ax = _figure(8.0, 0.55 + 0.5 * len(shares))
    _style(ax)
    names = list(shares)
    for row, name in enumerate(names):
        left = 0.0
        for label in labels:
            value = float(shares[name].get(label, 0.0))
            if value <= 0:
                continue
            ax.barh(row, value, left=left, color=colour(label), height=0.62, edgecolor="white")
            if value >= 0.06:
                ax.text(left + value / 2, row, f"{label} {value:.0%}", ha="center", va="center",
                        fontsize=8, color="white" if _dark(colour(label)) else INK)
            left += value
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(axis="x", color=GRID)
    ax.legend(handles=[Patch(color=colour(label), label=label) for label in labels],
              loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(shares) > 1 else -0.3),
              ncol=min(len(labels), 9), frameon=False, fontsize=8)
    return fig


@_themed
def emotion_by_language(counts: pd.DataFrame) -> Figure:
    """100 % stacked bars of emotion shares, one bar per language.

    Args:
        counts: Segments per (language row, emotion column).
    """
    shares = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    labels = [e for e in EMOTIONS if e in shares.columns] + [
        e for e in shares.columns if e not in EMOTIONS
    ]
    fig, ax = _figure(8.0, 0.9 + 0.42 * len(shares))
    _style(ax)
    for row, lang in enumerate(shares.index):
        left = 0.0
        for label in labels:
            value = float(shares.loc[lang, label])
            if value <= 0:
                continue
            ax.barh(row, value, left=left, color=emotion_colour(label), height=0.62,
                    edgecolor="white")
            if value >= 0.07:
                ax.text(left + value / 2, row, f"{value:.0%}", ha="center", va="center",
                        fontsize=8, color="white" if _dark(emotion_colour(label)) else INK)
            left += value
    totals = counts.sum(axis=1)
    ax.set_yticks(range(len(shares)),
                  [f"{lang}  (n={int(totals[lang]):,})" for lang in shares.index])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(axis="x", color=GRID)
    ax.legend(handles=[Patch(color=emotion_colour(e), label=e) for e in labels],
              loc="upper center", bbox_to_anchor=(0.5, -0.08 - 0.1 / max(len(shares), 1)),
              ncol=min(len(labels), 9), frameon=False, fontsize=8)
    return fig


@_themed
def confidence_histograms(histograms: dict[str, np.ndarray], threshold: float) -> Figure:
    """Side-by-side histograms of the top probability, one per task.

    Args:
        histograms: ``{task: counts}``, counts over equal bins spanning [0, 1].
        threshold: Drawn as a dashed line (the low-confidence limit).
    """
    fig, axes = _figure(8.0, 2.4, ncols=max(len(histograms), 1), squeeze=False)
    for ax, (task, counts) in zip(axes[0], histograms.items()):
        _style(ax)
        counts = np.asarray(counts, dtype=float)
        edges = np.linspace(0.0, 1.0, len(counts) + 1)
        total = counts.sum()
        share = counts / total if total else counts
        colours = ["#c3cad3" if right <= threshold else "#4e79a7" for right in edges[1:]]
        ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", color=colours,
               edgecolor="white", linewidth=0.6)
        ax.axvline(threshold, color=INK, linestyle="--", linewidth=0.8)
        low = share[edges[1:] <= threshold + 1e-12].sum()
        ax.set_title(f"{task}  ·  {low:.0%} below {threshold:g}", fontsize=9.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("top probability")
        ax.yaxis.set_major_locator(MaxNLocator(5, steps=[1, 2, 5, 10]))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
        ax.grid(axis="y", color=GRID)
    return fig


@_themed
def timeline(segments: pd.DataFrame, title: str | None = None,
             max_bins: int = TIMELINE_BINS, log_mel: np.ndarray | None = None,
             features: FeatureParams | None = None) -> Figure:
    """Language and emotion along one recording, their probabilities beneath.

    Consecutive segments with the same label are drawn as one bar (one
    collection per label). A recording of more than ``max_bins`` segments is
    first reduced to ``max_bins`` equal time bins holding the majority label
    and the mean probability: finer detail would fall below a pixel anyway.

    Args:
        segments: One recording's rows, with ``start_s``, ``end_s``,
            ``lang``, ``lang_p``, ``emotion``, ``emotion_p`` (and ``speech_p``,
            the speech detector's probability, drawn where the table has it).
        title: Drawn above the lanes.
        max_bins: Most bars per lane.
        log_mel: np.ndarray [shape=(frames, n_mels)], natural-log mel power
            of the whole recording: drawn as a spectrogram on the same time axis.
        features: The settings ``log_mel`` was computed with (needed with it).
    """
    frame = segments.sort_values("start_s")
    span = float(frame["end_s"].max()) if len(frame) else 1.0
    if len(frame) > max_bins:
        frame = _binned(frame, span, max_bins)
        title = f"{title + ' · ' if title else ''}{max_bins} time bins (majority label, mean p)"
    ratios = [1.25, 1.0] + ([1.7] if log_mel is not None else [])
    fig, axes = _figure(9.0, 2.9 + (1.9 if log_mel is not None else 0.0), nrows=len(ratios),
                        sharex=True, gridspec_kw={"height_ratios": ratios})
    for ax in axes:
        _style(ax)
    _draw_lanes(axes[0], axes[1], frame, span, title)
    if log_mel is not None:
        _draw_spectrogram(axes[2], log_mel, features)
    axes[-1].set_xlim(0, span)
    _time_axis(axes[-1].xaxis, span)
    return fig


def _draw_lanes(lanes, probs, frame: pd.DataFrame, span: float, title: str | None) -> None:
    starts = frame["start_s"].to_numpy(float)
    ends = frame["end_s"].to_numpy(float)
    # With overlapping windows (hop < window) each segment owns the time up to the next start.
    stops = np.minimum(ends, np.append(starts[1:], np.inf)) if len(starts) else ends
    lanes.broken_barh([(0.0, span)], (-0.35, 1.7), color=NO_SPEECH)
    handles = []
    for row, column, colour in ((0, "lang", language_colour), (1, "emotion", emotion_colour)):
        labels = frame[column].astype(object).where(frame[column].notna(), None).to_numpy()
        bars: dict[str, list[tuple[float, float]]] = {}
        for label, first, last in _runs(labels):
            if label is not None:
                bars.setdefault(label, []).append((starts[first], stops[last] - starts[first]))
        order = LANGUAGES if column == "lang" else EMOTIONS
        for label in sorted(bars, key=lambda x: (order.index(x) if x in order else 99, x)):
            lanes.broken_barh(bars[label], (row - 0.35, 0.7), color=colour(label),
                              edgecolor="none")
            handles.append(Patch(color=colour(label), label=label))
    lanes.set_yticks([0, 1], ["language", "emotion"])
    lanes.set_ylim(1.55, -0.55)
    lanes.spines["left"].set_visible(False)
    if title:
        lanes.set_title(title, fontsize=9.5, fontweight="normal", color=INK)
    drawn = [("lang_p", "#4e79a7", "language"), ("emotion_p", "#d1495b", "emotion")]
    if "speech_p" in frame.columns and frame["speech_p"].notna().any():
        # Where the speech detector heard speech, and how sure it was.
        drawn.append(("speech_p", "#59a14f", "speech"))
    for column, colour, name in drawn:
        values = frame[column].to_numpy(float, na_value=np.nan)
        probs.step(np.append(starts, stops[-1:]), np.append(values, values[-1:]), where="post",
                   color=colour, linewidth=1.1, label=f"{name} p")
    probs.set_ylim(0, 1.02)
    probs.set_yticks([0, 0.5, 1], ["0", "0.5", "1"])
    probs.set_ylabel("top p")
    probs.grid(axis="y", color=GRID)
    handles.append(Patch(color=NO_SPEECH, label="no speech"))
    lanes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.02), frameon=False,
                 fontsize=7.5, handlelength=1.0)
    probs.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False, fontsize=7.5,
                 handlelength=1.2)


def _draw_spectrogram(ax, log_mel: np.ndarray, features: FeatureParams) -> None:
    span = max(log_mel.shape[0] * features.hop_s, features.hop_s)
    # A fixed dynamic range below the loudest bins, so that silence does not set the scale.
    top = float(np.percentile(log_mel, 99.5)) if log_mel.size else 0.0
    ax.imshow(log_mel.T, origin="lower", aspect="auto", cmap="magma",
              extent=(0, span, 0, log_mel.shape[1]), vmin=top - SPECTROGRAM_RANGE, vmax=top,
              interpolation="nearest")
    ax.set_yticks([0, log_mel.shape[1]],
                  [f"{features.fmin_hz:.0f} Hz", f"{features.fmax_hz / 1000:.1f} kHz"])
    ax.set_ylabel("log-mel")


def _binned(frame: pd.DataFrame, span: float, bins: int) -> pd.DataFrame:
    """Equal time bins of a recording: majority label and mean top probability per bin."""
    edges = np.linspace(0.0, span, bins + 1)
    index = np.clip(np.searchsorted(edges, frame["start_s"].to_numpy(float), "right") - 1,
                    0, bins - 1)
    out = pd.DataFrame({"start_s": edges[:-1], "end_s": edges[1:]})
    for label, prob in (("lang", "lang_p"), ("emotion", "emotion_p")):
        labels = frame[label].astype(object).fillna("")
        counts = pd.crosstab(index, labels.to_numpy())
        majority = counts.idxmax(axis=1).reindex(range(bins))
        out[label] = majority.where(majority.notna() & (majority != ""), None).to_numpy()
        out[prob] = frame[prob].groupby(index).mean().reindex(range(bins)).to_numpy()
    if "speech_p" in frame.columns:
        out["speech_p"] = frame["speech_p"].groupby(index).mean().reindex(range(bins)).to_numpy()
    return out


def _runs(labels: np.ndarray):
    """``(label, first index, last index)`` of each run of equal consecutive labels."""
    if len(labels) == 0:
        return
    first = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[first]:
            yield labels[first], first, i - 1
            first = i


def _dark(hex_colour: str) -> bool:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b < 150


__all__ = [
    "confidence_histograms",
    "emotion_by_language",
    "emotion_colour",
    "format_time",
    "language_colour",
    "png_base64",
    "png_bytes",
    "share_bars",
    "timeline",
]
