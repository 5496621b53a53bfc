"""What is in an output table: the numbers behind ``annotate summarize``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from annotate.errors import UsageError
from annotate.pipeline.store import failures_path, read_metadata

#: The language of a recording without any speech segment.
NO_SPEECH = "(no speech)"
#: Segments whose top probability is below this count as low-confidence.
LOW_CONFIDENCE = 0.5


def read_output(path: str | Path) -> pd.DataFrame:
    """Read a segments table written by ``annotate run``.

    Raises:
        UsageError: The file is missing or is not an annotate table.
    """
    path = Path(path)
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        hint = " (an interrupted run is in progress: rerun `annotate run`)" if partial.exists() else ""
        raise UsageError(f"no such table: {path}{hint}")
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001
        raise UsageError(f"{path} is not a readable Parquet file: {error}") from None
    missing = {"path", "start_s", "end_s", "speech"} - set(table.column_names)
    if missing:
        raise UsageError(f"{path} is not an annotate table: it lacks {sorted(missing)}")
    return table.to_pandas()


def speech_seconds(segments: pd.DataFrame) -> pd.Series:
    """Seconds of speech in each segment: the ``speech_s`` column.

    Tables written before it existed count a speech segment's whole duration.
    """
    if "speech_s" in segments.columns:
        return segments["speech_s"].astype(float).fillna(0.0)
    duration = segments["end_s"] - segments["start_s"]
    return duration.where(segments["speech"].fillna(False).astype(bool), 0.0)


def per_recording(segments: pd.DataFrame) -> pd.DataFrame:
    """One row per recording: durations, duration-weighted mean probabilities, top labels.

    ``speech_s`` is the recording's seconds of speech (the segments'
    ``speech_s``); the means weigh each speech segment by its duration, as
    the annotator does when it picks a recording's emotion model.
    """
    frame = segments.copy()
    frame["duration_s"] = frame["end_s"] - frame["start_s"]
    weight = frame["duration_s"].where(frame["speech"], 0.0)
    frame["speech_s"] = speech_seconds(segments)
    prob_columns = [c for c in frame.columns
                    if (c.startswith("lang_") and c != "lang_p") or c.startswith("emo_")]
    weighted = frame[prob_columns].mul(weight, axis=0)
    grouped = frame.groupby("path", sort=True)
    out = pd.DataFrame({
        "duration_s": grouped["end_s"].max(),
        "speech_s": grouped["speech_s"].sum(),
        "segments": grouped.size(),
    })
    sums = weighted.groupby(frame["path"]).sum(min_count=1)
    # Weight only over the rows where a column is defined (non-null).
    present = frame[prob_columns].notna().mul(weight, axis=0).groupby(frame["path"]).sum()
    means = sums / present.replace(0.0, np.nan)
    out = out.join(means)
    lang_cols = [c for c in prob_columns if c.startswith("lang_")]
    emo_cols = [c for c in prob_columns if c.startswith("emo_")]
    out["lang"] = _argmax_label(out[lang_cols], "lang_")
    out["emotion"] = _argmax_label(out[emo_cols], "emo_")
    # A recording that switches language has one emotion model per stretch: list them in order.
    models = (frame.dropna(subset=["emotion_model"]).groupby("path")["emotion_model"]
              .agg(lambda names: ",".join(dict.fromkeys(names))))
    out["emotion_model"] = models
    return out.reset_index()


def _argmax_label(probs: pd.DataFrame, prefix: str) -> pd.Series:
    filled = probs.fillna(-1.0)
    best = filled.idxmax(axis=1).str.removeprefix(prefix)
    return best.where(probs.notna().any(axis=1))


def summarize(path: str | Path) -> dict:
    """The report of ``annotate summarize`` as a JSON-serialisable dict."""
    path = Path(path)
    segments = read_output(path)
    recordings = per_recording(segments) if len(segments) else pd.DataFrame()
    speech = segments[segments["speech"]]
    speech_dur = speech_seconds(segments)[segments["speech"]]
    report: dict = {
        "table": str(path),
        "recordings": int(segments["path"].nunique()),
        "segments": int(len(segments)),
        "speech_segments": int(len(speech)),
        "audio_hours": float(recordings["duration_s"].sum() / 3600) if len(recordings) else 0.0,
        "speech_hours": float(speech_dur.sum() / 3600),
    }
    total_speech = float(speech_dur.sum()) or 1.0
    report["language_share_by_time"] = {
        str(k): float(v) / total_speech for k, v in speech_dur.groupby(speech["lang"]).sum().items()
    }
    if len(recordings):
        counts = recordings["lang"].fillna(NO_SPEECH).value_counts()
        report["language_share_by_recording"] = {
            str(k): int(v) / len(recordings) for k, v in counts.items()
        }
    else:
        report["language_share_by_recording"] = {}
    emotions = {}
    for lang, group in speech.groupby("lang"):
        counts = group["emotion"].value_counts()
        total = int(counts.sum())
        emotions[str(lang)] = {str(k): int(v) / total for k, v in counts.items()} if total else {}
    report["emotion_by_language"] = emotions
    report["low_confidence"] = {
        "threshold": LOW_CONFIDENCE,
        "language": float((speech["lang_p"] < LOW_CONFIDENCE).mean()) if len(speech) else 0.0,
        "emotion": float((speech["emotion_p"].dropna() < LOW_CONFIDENCE).mean())
        if speech["emotion_p"].notna().any() else 0.0,
    }
    report["emotion_models"] = sorted(speech["emotion_model"].dropna().unique().tolist())
    fail_path = failures_path(path)
    if fail_path.is_file():
        failures = pq.read_table(fail_path).to_pandas()
        report["failures"] = {
            "count": int(len(failures)),
            "by_error": {str(k): int(v) for k, v in failures["error"].value_counts().items()},
            "examples": failures.head(10).to_dict("records"),
        }
    else:
        report["failures"] = {"count": None, "by_error": {}, "examples": []}
    metadata = read_metadata(path)
    report["run"] = {k: metadata.get(k) for k in ("version", "settings", "fingerprint",
                                                  "run_centring", "speaker_adaptation")}
    report["run"]["models"] = [
        {k: m.get(k) for k in ("name", "task", "languages", "hash")}
        for m in metadata.get("models", [])
    ]
    return report


__all__ = ["per_recording", "read_output", "summarize"]
