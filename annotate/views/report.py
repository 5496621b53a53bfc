"""``annotate report``: one self-contained HTML file describing an output table.

The table is aggregated before anything is drawn (group-bys over a few
columns read by name), so a million segments make the same handful of
figures as a hundred. Figures are embedded as base64 PNG and the style sheet
is inline: the file opens offline, from an e-mail or a lab-meeting slide.
"""

from __future__ import annotations

import difflib
import html
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from annotate.errors import UsageError
from annotate.labels import EMOTIONS
from annotate.pipeline.store import failures_path, read_metadata
from annotate.views import plots
from annotate.views.summarize import LOW_CONFIDENCE, speech_seconds

#: The columns a report reads (plus the ``lang_<code>`` probabilities).
COLUMNS = ("path", "start_s", "end_s", "speech", "lang", "lang_p", "emotion", "emotion_p")
#: Failures listed one by one; beyond this only the counts by kind are shown.
MAX_FAILURES_LISTED = 200
HISTOGRAM_BINS = 20


@dataclass
class ReportData:
    """Everything the report shows, aggregated (nothing here grows with the segments).

    Attributes:
        table: The segments table.
        segments: Number of segments.
        speech_segments: Segments holding speech.
        recordings: One row per recording: ``duration_s``, ``speech_s``,
            ``segments``, ``lang`` (the recording's language), indexed by path.
        language_time_s: Speech seconds per segment language.
        language_p: Mean language probability per segment language.
        emotion_counts: Speech segments per (language, emotion).
        histograms: Counts of the top probability per task, over equal bins of [0, 1].
        timelines: ``{path: that recording's segments}`` for the timelines.
        failures: The failures table (None: no failures table beside the output).
        metadata: The run's ``annotate`` metadata.
    """

    table: Path
    segments: int
    speech_segments: int
    recordings: pd.DataFrame
    language_time_s: pd.Series
    language_p: pd.Series
    emotion_counts: pd.DataFrame
    histograms: dict[str, np.ndarray]
    timelines: dict[str, pd.DataFrame] = field(default_factory=dict)
    failures: pd.DataFrame | None = None
    metadata: dict = field(default_factory=dict)


def read_segments(path: Path) -> pd.DataFrame:
    """The report's columns of a segments table (labels and paths as categoricals).

    Raises:
        UsageError: The file is missing or is not an annotate table.
    """
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        hint = (" (an interrupted run is in progress: rerun `annotate run`)"
                if partial.exists() else "")
        raise UsageError(f"no such table: {path}{hint}")
    try:
        names = pq.read_schema(path).names
    except Exception as error:  # noqa: BLE001 - any unreadable file is a usage error here
        raise UsageError(f"{path} is not a readable Parquet file: {error}") from None
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise UsageError(f"{path} is not an annotate table: it lacks {missing}")
    lang_columns = [c for c in names if c.startswith("lang_") and c != "lang_p"]
    detector = [c for c in ("speech_p", "speech_s") if c in names]  # tables from 0.1 on
    table = pq.read_table(path, columns=[*COLUMNS, *detector, *lang_columns],
                          read_dictionary=["path", "lang", "emotion"])
    return table.to_pandas()


def aggregate(table: str | Path, recordings: list[str] | None = None,
              timelines: int = 3) -> ReportData:
    """Read a segments table and reduce it to what the report shows.

    Args:
        table: A table written by ``annotate run``.
        recordings: Paths (as in the table) to draw timelines for; default:
            the ``timelines`` longest recordings.
        timelines: How many of the longest recordings get a timeline.

    Raises:
        UsageError: The table is missing or unreadable, or a named recording is not in it.
    """
    table = Path(table)
    frame = read_segments(table)
    duration = frame["end_s"] - frame["start_s"]
    speech = frame["speech"].fillna(False).astype(bool)
    weight = duration.where(speech, 0.0)
    by_path = frame.groupby("path", observed=True, sort=True)
    per_recording = pd.DataFrame({
        "duration_s": by_path["end_s"].max(),
        "speech_s": speech_seconds(frame).groupby(frame["path"], observed=True).sum(),
        "segments": by_path.size(),
    })
    lang_columns = [c for c in frame.columns if c.startswith("lang_") and c != "lang_p"]
    # A recording's language as the annotator routes it: the speech-time-weighted
    # mean of its segments' language probabilities.
    weighted = frame[lang_columns].mul(weight, axis=0).groupby(frame["path"], observed=True)
    means = weighted.sum(min_count=1)
    per_recording["lang"] = (means.fillna(-1.0).idxmax(axis=1).str.removeprefix("lang_")
                             .where(means.notna().any(axis=1)) if lang_columns else None)

    talk = frame[speech]
    talk_s = speech_seconds(frame)[speech]
    emotion_counts = (talk.dropna(subset=["emotion"])
                      .groupby(["lang", "emotion"], observed=True).size()
                      .unstack(fill_value=0))
    histograms = {
        task: np.histogram(talk[column].dropna().to_numpy(float), bins=HISTOGRAM_BINS,
                           range=(0.0, 1.0))[0]
        for task, column in (("language", "lang_p"), ("emotion", "emotion_p"))
    }
    data = ReportData(
        table=table,
        segments=len(frame),
        speech_segments=int(speech.sum()),
        recordings=per_recording,
        language_time_s=talk_s.groupby(talk["lang"], observed=True).sum().sort_values(
            ascending=False),
        language_p=talk["lang_p"].groupby(talk["lang"], observed=True).mean(),
        emotion_counts=emotion_counts,
        histograms=histograms,
        metadata=read_metadata(table),
    )
    for path in _timeline_paths(per_recording, recordings, timelines, table):
        data.timelines[path] = frame[frame["path"] == path].drop(columns=lang_columns)
    fail_path = failures_path(table)
    if fail_path.is_file():
        data.failures = pq.read_table(fail_path).to_pandas()
    return data


def _timeline_paths(per_recording: pd.DataFrame, named: list[str] | None, count: int,
                    table: Path) -> list[str]:
    known = per_recording.index
    if not named:
        return per_recording["duration_s"].nlargest(max(count, 0)).index.tolist()
    for path in named:
        if path not in known:
            close = difflib.get_close_matches(path, known.tolist(), n=5, cutoff=0.5)
            hint = (f"; did you mean one of [{', '.join(close)}]?" if close
                    else f"; paths are as written in the table, e.g. {known[0]!r}"
                    if len(known) else "; the table is empty")
            raise UsageError(f"bad recording {path!r}: it is not in {table}{hint}")
    return list(dict.fromkeys(named))


def write_report(table: str | Path, output: str | Path, recordings: list[str] | None = None,
                 timelines: int = 3) -> Path:
    """Write the HTML report of a segments table.

    Args:
        table: A table written by ``annotate run``.
        output: The HTML file to write.
        recordings: Recordings to draw timelines for (default: the longest).
        timelines: How many of the longest recordings get a timeline.

    Returns:
        The path written.

    Raises:
        UsageError: Bad table, recording or output path.
    """
    output = Path(output)
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"the output folder {folder} does not exist")
    text = render_html(aggregate(table, recordings, timelines))
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot write {output}: {error.strerror}") from None
    return output


# --- HTML -----------------------------------------------------------------

_CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --soft:#f5f7fa; --accent:#4e79a7; }
* { box-sizing: border-box; }
body { margin:0; background:#fff; color:var(--ink);
  font:15px/1.55 -apple-system, "Segoe UI", "Helvetica Neue", Helvetica, Arial, sans-serif; }
main { max-width: 960px; margin: 0 auto; padding: 40px 32px 64px; }
header { border-bottom: 2px solid var(--ink); padding-bottom: 14px; margin-bottom: 8px; }
header + section h2 { border-top: none; margin-top: 16px; }
h1 { font-size: 28px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 40px 0 6px; padding-top: 8px; border-top: 1px solid var(--line); }
h3 { font-size: 15px; margin: 22px 0 4px; font-weight: 600; }
h3.path { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 14px; }
p.lede, .sub { color: var(--muted); margin: 0 0 12px; }
.sub code { font-size: 13px; }
code, td.mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 12px; }
.card { background: var(--soft); border-radius: 8px; padding: 12px 14px; }
.card b { display: block; font-size: 22px; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: 13px; }
.card.warn b { color: #b42318; }
figure { margin: 12px 0 8px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; width: 100%; margin: 10px 0 4px; font-size: 14px; }
table.narrow { width: auto; min-width: 50%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; background: var(--soft); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.msg { color: #3e4c59; word-break: break-word; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 6px; vertical-align: baseline; }
.note { color: var(--muted); font-size: 13px; }
footer { margin-top: 48px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line);
  padding-top: 10px; }
@media print { main { padding: 0; } h2 { break-after: avoid; } figure { break-inside: avoid; } }
"""


def render_html(data: ReportData) -> str:
    """The report as one HTML document (figures embedded, no external resources)."""
    meta = data.metadata
    title = f"Annotation report: {data.table.name}"
    sections = [
        _overview(data),
        _languages(data),
        _emotions(data),
        _confidence(data),
        _timelines(data),
        _failures(data),
        _run(meta),
    ]
    version = meta.get("version", "unknown")
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="sub"><code>{_e(data.table)}</code> · annotate {_e(version)} · '
        f"report generated {stamp}</p></header>",
        *sections,
        f"<footer>annotate {_e(version)} · fingerprint "
        f"<code>{_e(str(meta.get('fingerprint', ''))[:16])}</code></footer>",
        "</main></body></html>",
    ])


def _overview(data: ReportData) -> str:
    audio_s = float(data.recordings["duration_s"].sum())
    speech_s = float(data.recordings["speech_s"].sum())
    failed = len(data.failures) if data.failures is not None else None
    share = data.speech_segments / data.segments if data.segments else 0.0
    cards = [
        (f"{len(data.recordings):,}", "recordings"),
        (f"{data.segments:,}", "segments"),
        (f"{data.speech_segments:,}", f"with speech ({share:.0%})"),
        (_duration(audio_s), "audio"),
        (_duration(speech_s), "speech"),
        (f"{len(data.language_time_s)}", "languages detected"),
    ]
    items = "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cards)
    warn = " warn" if failed else ""
    items += (f'<div class="card{warn}"><b>{"–" if failed is None else f"{failed:,}"}</b>'
              f"<span>failed inputs</span></div>")
    return f'<section><h2>Overview</h2><div class="cards">{items}</div></section>'


def _languages(data: ReportData) -> str:
    head = "<section><h2>Spoken language</h2>"
    if data.language_time_s.empty:
        return head + '<p class="note">No speech segments: nothing to show.</p></section>'
    by_time = data.language_time_s / data.language_time_s.sum()
    recording_langs = data.recordings["lang"].dropna()
    by_recording = recording_langs.value_counts(normalize=True)
    figure = plots.share_bars({"speech time": by_time, "recordings": by_recording})
    rows = []
    for lang in dict.fromkeys([*by_time.index, *by_recording.index]):
        rows.append([
            _swatch(plots.language_colour(lang)) + _e(lang),
            _duration(float(data.language_time_s.get(lang, 0.0))),
            f"{by_time.get(lang, 0.0):.1%}",
            f"{int((recording_langs == lang).sum()):,}",
            f"{by_recording.get(lang, 0.0):.1%}",
            f"{data.language_p.get(lang, float('nan')):.2f}",
        ])
    table = _table(["language", "speech time", "share of speech", "recordings",
                    "share of recordings", "mean p"], rows, numeric={1, 2, 3, 4, 5})
    return (head + '<p class="lede">Share of speech time by the language of each segment, '
            "and share of recordings by the language the run assigned to each recording "
            "(the speech-time-weighted mean of its segments; it chose the emotion model).</p>"
            + _figure(figure, "Language share") + table + "</section>")


def _emotions(data: ReportData) -> str:
    head = "<section><h2>Emotion by language</h2>"
    counts = data.emotion_counts
    if counts.empty:
        return head + '<p class="note">No emotion labels in this table.</p></section>'
    languages = [lang for lang in data.language_time_s.index if lang in counts.index]
    labels = [e for e in EMOTIONS if e in counts.columns]
    labels += [e for e in counts.columns if e not in labels]
    counts = counts.loc[languages, labels]
    figure = plots.emotion_by_language(counts)
    shares = counts.div(counts.sum(axis=1), axis=0)
    rows = [[_e(lang), f"{int(counts.loc[lang].sum()):,}",
             *(_percent(shares.loc[lang, e]) if counts.loc[lang, e] else "·" for e in labels)]
            for lang in counts.index]
    header = ["language", "segments", *(_swatch(plots.emotion_colour(e)) + _e(e) for e in labels)]
    table = _table(header, rows, numeric=set(range(1, len(header))), raw_header=True)
    centred = (data.metadata.get("run_centring") or {}).get("models")
    per_run = ""
    if centred:
        per_run = (" The cross-lingual model's emotions are relative to this run ("
                   + _e(", ".join(f"{name}: {m['speech_s']:.0f} s of speech"
                                  for name, m in centred.items()))
                   + "), as it learnt each corpus relative to itself.")
    adapted = data.metadata.get("speaker_adaptation")
    per_speaker = ""
    if adapted:
        done = {name: m["speakers_adapted"] for name, m in adapted["models"].items()}
        per_speaker = (" The emotions are relative to each speaker's own voice "
                       f"(<code>--speakers {_e(adapted['source'])}</code>: "
                       + _e(", ".join(f"{name} {n} of {adapted['speakers']} speakers"
                                      for name, n in done.items()))
                       + "; speakers with too little speech keep the model's own).")
    return (head + '<p class="lede">Emotion of each speech segment, by the segment\'s '
            "language. Labels an emotion model does not have stay empty." + per_run + per_speaker
            + "</p>" + _figure(figure, "Emotion distribution per language (share of speech segments)")
            + table + "</section>")


def _confidence(data: ReportData) -> str:
    head = "<section><h2>Confidence</h2>"
    if data.speech_segments == 0:
        return head + '<p class="note">No speech segments: nothing to show.</p></section>'
    figure = plots.confidence_histograms(data.histograms, LOW_CONFIDENCE)
    return (head + '<p class="lede">Top probability of each speech segment, per task. '
            f"Segments below {LOW_CONFIDENCE:g} (grey) deserve a listen before they are "
            "trusted.</p>" + _figure(figure, "Top-probability histograms") + "</section>")


def _timelines(data: ReportData) -> str:
    head = "<section><h2>Timelines</h2>"
    if not data.timelines:
        return head + '<p class="note">No recordings.</p></section>'
    parts = [head, '<p class="lede">Language and emotion along each recording; consecutive '
             "segments with the same label are merged. Below: the top probability of each "
             "segment.</p>"]
    for path, segments in data.timelines.items():
        row = data.recordings.loc[path]
        language = f"language {row['lang']}" if isinstance(row["lang"], str) else "no speech"
        parts.append(f'<h3 class="path">{_e(path)}</h3>')
        parts.append(_figure(plots.timeline(segments),
                             f"{_duration(float(row['duration_s']))} · "
                             f"{int(row['segments']):,} segments · "
                             f"{_duration(float(row['speech_s']))} speech · {language}"))
    parts.append("</section>")
    return "".join(parts)


def _failures(data: ReportData) -> str:
    head = "<section><h2>Failures</h2>"
    failures = data.failures
    if failures is None:
        return (head + f'<p class="note">No failures table beside the output '
                f"(<code>{_e(failures_path(data.table).name)}</code>).</p></section>")
    if failures.empty:
        return head + '<p class="note">None: every input was annotated.</p></section>'
    kinds = failures["error"].value_counts()
    summary = _table(["kind", "inputs"], [[_e(k), f"{v:,}"] for k, v in kinds.items()],
                     numeric={1}, narrow=True)
    shown = failures.head(MAX_FAILURES_LISTED)
    listed = _table(["path", "kind", "message"],
                    [[_e(r.path), _e(r.error), _e(r.message)] for r in shown.itertuples()],
                    classes={0: "mono", 2: "msg"})
    more = (f'<p class="note">The first {MAX_FAILURES_LISTED} of {len(failures):,} are listed; '
            f"all are in <code>{_e(failures_path(data.table).name)}</code>.</p>"
            if len(failures) > MAX_FAILURES_LISTED else "")
    return (head + f'<p class="lede">{len(failures):,} inputs could not be annotated.</p>'
            + summary + listed + more + "</section>")


def _run(meta: dict) -> str:
    head = "<section><h2>Run</h2>"
    if not meta:
        return head + '<p class="note">The table carries no run metadata.</p></section>'
    settings = dict(meta.get("settings") or {})
    rows = [[_e(k), _e(_value(v))] for k, v in settings.items()]
    rows += [[_e(k), _e(_value(meta[k]))] for k in ("version", "schema_version", "fingerprint")
             if k in meta]
    models = meta.get("models") or []
    model_rows = [[
        _e(m.get("name")), _e(m.get("task")), _e(_value(m.get("languages"))),
        _e(_value(m.get("routed_for")) if m.get("routed_for") is not None else "–"),
        _e(str(m.get("hash", ""))[:19]), _e(m.get("folder")),
    ] for m in models]
    return (head + "<h3>Settings</h3>" + _table(["setting", "value"], rows, classes={1: "mono"},
                                                       narrow=True)
            + "<h3>Models</h3>"
            + _table(["name", "task", "languages", "routed for", "hash", "folder"], model_rows,
                     classes={4: "mono", 5: "mono"})
            + "</section>")


def _figure(fig, caption: str) -> str:
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,'
            f'{plots.png_base64(fig)}"><figcaption>{_e(caption)}</figcaption></figure>')


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           classes: dict[int, str] | None = None, raw_header: bool = False,
           narrow: bool = False) -> str:
    """An HTML table of cells that are already escaped HTML."""
    classes = dict(classes or {})
    for i in numeric:
        classes[i] = "num"

    def cls(i: int) -> str:
        return f' class="{classes[i]}"' if i in classes else ""

    head = "".join(f"<th{cls(i)}>{h if raw_header else _e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    table = '<table class="narrow">' if narrow else "<table>"
    return f"{table}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _percent(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes} min {secs} s"
    return f"{seconds / 3600:,.1f} h"


def _value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "–"
    return "–" if value is None else str(value)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


__all__ = ["ReportData", "aggregate", "read_segments", "render_html", "write_report"]
