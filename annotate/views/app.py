"""The Streamlit app of ``annotate app``: annotate a clip, browse a results table.

Run by ``annotate app`` as ``streamlit run annotate/views/app.py -- [options]``;
options (see :class:`annotate.views.app_logic.AppConfig`) may also come from
``ANNOTATE_*`` environment variables. The work is done in
:mod:`annotate.views.app_logic`; this script only lays it out.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

# `streamlit run` puts this file's folder, the package itself, first on sys.path; its
# module names (errors, schema, testing, ...) must not shadow other libraries' modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from annotate.errors import AnnotateError, InputError, ModelError  # noqa: E402
from annotate.views import app_logic as logic  # noqa: E402
from annotate.views import plots  # noqa: E402
from annotate.views.summarize import speech_seconds  # noqa: E402

PROBABILITY = st.column_config.ProgressColumn(format="%.2f", min_value=0.0, max_value=1.0)
TABLE_ROWS_SHOWN = 2000


def main() -> None:
    st.set_page_config(page_title="annotate", layout="wide")
    # Options reach the script only when Streamlit runs it as the main script.
    own_argv = Path(sys.argv[0]).resolve() == Path(__file__).resolve()
    try:
        config = logic.AppConfig.from_sources(sys.argv[1:] if own_argv else [], os.environ)
    except AnnotateError as error:
        st.error(str(error))
        return
    st.title(logic.TITLE)
    st.caption("Spoken language and emotion, segment by segment, with the models of "
               "`annotate run`.")
    corpus_root = sidebar(config)
    clip_tab, browse_tab = st.tabs(["Annotate a clip", "Browse results"])
    with clip_tab:
        clip_page(config)
    with browse_tab:
        browse_page(config, corpus_root)


def sidebar(config: logic.AppConfig) -> str:
    with st.sidebar:
        st.header("Models")
        try:
            models = config.load_models()
        except AnnotateError as error:
            st.warning(str(error))
        else:
            st.markdown(f"**language**: `{models.language.name}` "
                        f"({', '.join(models.language.labels)})")
            for code, spec in sorted(models.emotion.items(), key=lambda item: item[0] == "*"):
                st.markdown(f"**emotion {'(other languages)' if code == '*' else code}**: "
                            f"`{spec.name}`")
        st.header("Segments")
        st.number_input("Window (s)", min_value=0.5, max_value=30.0, value=3.0, step=0.5,
                        key="window_s")
        st.header("Corpus")
        return st.text_input(
            "Corpus root", value=config.corpus_root or "", key="corpus_root",
            help="The folder given to `annotate run`: paths in the table are relative to it.")


@st.cache_resource(show_spinner="Loading the models…")
def clip_annotator(config: logic.AppConfig) -> logic.ClipAnnotator:
    return logic.ClipAnnotator(config.load_models())


@st.cache_data(show_spinner="Annotating…", max_entries=8)
def annotate_clip(name: str, data: bytes, window_s: float,
                  _annotator: logic.ClipAnnotator, config: logic.AppConfig) -> logic.ClipResult:
    return _annotator.annotate_upload(name, data, window_s)


def _remember(source: str) -> None:
    st.session_state["clip_source"] = source


def clip_page(config: logic.AppConfig) -> None:
    left, right = st.columns(2)
    with left:
        recorded = st.audio_input("Record from the microphone", key="recorded",
                                  on_change=_remember, args=("recorded",))
    with right:
        uploaded = st.file_uploader(
            f"…or upload a recording (up to {logic.MAX_UPLOAD_MB} MB)", key="uploaded",
            max_upload_size=logic.MAX_UPLOAD_MB, on_change=_remember, args=("uploaded",))
    # The input changed last wins; either alone is used as it is.
    latest = st.session_state.get("clip_source")
    clip = {"recorded": recorded, "uploaded": uploaded}.get(latest) or uploaded or recorded
    if clip is None:
        st.info("Record or upload a clip to see its language and emotion, segment by segment.")
        return
    data = clip.getvalue()
    try:
        logic.check_upload(clip.name, len(data))
        annotator = clip_annotator(config)
        result = annotate_clip(clip.name, data, float(st.session_state.window_s), annotator,
                               config)
    except ModelError as error:
        st.error(f"No models to annotate with: {error}")
        return
    except (InputError, AnnotateError) as error:
        st.error(str(error))
        return
    show_clip(clip.name, data, result)


def show_clip(name: str, data: bytes, result: logic.ClipResult) -> None:
    rows = result.rows
    summary = logic.clip_summary(rows)
    speech_s = float(speech_seconds(rows).sum())
    st.subheader(f"{name} · {result.duration_s:.1f} s, of which speech {speech_s:.1f} s")
    st.audio(data)
    columns = st.columns(2)
    for column, task in zip(columns, ("language", "emotion")):
        top = summary[task]
        with column:
            if top.empty:
                st.metric(task.capitalize(), "no speech")
                continue
            st.metric(task.capitalize(), top.index[0], f"p = {top.iloc[0]:.2f}",
                      delta_color="off", delta_arrow="off")
            st.caption("  ·  ".join(f"{label} {p:.2f}" for label, p in top.items()))
    figure = plots.timeline(rows, title="language and emotion per segment, and the log-mel "
                            "spectrogram the models see", log_mel=result.log_mel,
                            features=result.features)
    st.image(plots.png_bytes(figure), width="stretch")
    st.dataframe(segment_table(rows), hide_index=True, column_config=probability_columns(rows))
    st.download_button("Download the segments (CSV)", rows.to_csv(index=False),
                       file_name=f"{Path(name).stem}.segments.csv", mime="text/csv")


def segment_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The columns worth reading: key, labels, then the probabilities a model gave."""
    present = [c for c in rows.columns if c.startswith(("lang_", "emo_")) and c != "lang_p"
               and rows[c].notna().any()]
    keep = ["path", "start_s", "end_s", "speech", "speech_p", "speech_s", "lang", "lang_p",
            "emotion", "emotion_p",
            *present, "emotion_model"]
    return rows[[c for c in keep if c in rows.columns]]


def probability_columns(rows: pd.DataFrame) -> dict:
    return {c: PROBABILITY for c in rows.columns
            if c in ("lang_p", "emotion_p") or c.startswith(("lang_", "emo_"))}


@st.cache_resource(show_spinner="Reading the table…", max_entries=2)
def load_results(path: str, modified: float) -> pd.DataFrame:
    from annotate.views.summarize import read_output

    return read_output(path)


def browse_page(config: logic.AppConfig, corpus_root: str) -> None:
    path = st.text_input("Results table", value=config.results or "", key="results",
                         placeholder="out.parquet written by `annotate run`")
    if not path:
        st.info("Give a table written by `annotate run` to browse its segments.")
        return
    try:
        checked = logic.check_results(path)
        frame = load_results(str(checked), checked.stat().st_mtime)
    except AnnotateError as error:
        st.error(str(error))
        return
    languages = sorted(frame["lang"].dropna().unique())
    emotions = sorted(frame["emotion"].dropna().unique())
    a, b, c = st.columns(3)
    chosen_languages = a.multiselect("Language", languages, key="f_lang")
    chosen_emotions = b.multiselect("Emotion", emotions, key="f_emotion")
    path_contains = c.text_input("Path contains", key="f_path")
    d, e, f = st.columns(3)
    min_lang = d.slider("Min. language p", 0.0, 1.0, 0.0, 0.05, key="f_lang_p")
    min_emo = e.slider("Min. emotion p", 0.0, 1.0, 0.0, 0.05, key="f_emo_p")
    speech_only = f.checkbox("Speech segments only", value=True, key="f_speech")
    shown = logic.filter_segments(frame, chosen_languages, chosen_emotions, min_lang, min_emo,
                                  path_contains, speech_only)
    st.markdown(f"**{len(shown):,}** of {len(frame):,} segments match"
                + (f" (the first {TABLE_ROWS_SHOWN:,} are listed)"
                   if len(shown) > TABLE_ROWS_SHOWN else ""))
    table = segment_table(shown.head(TABLE_ROWS_SHOWN))
    st.dataframe(table, hide_index=True, column_config=probability_columns(table),
                 on_select=functools.partial(_jump_to_selection, table),
                 selection_mode="single-row", key="table")
    if shown.empty:
        return
    st.caption("Select a row to open its recording and segment, or pick them here.")
    recordings = shown["path"].astype(str).unique().tolist()
    if st.session_state.get("recording") not in recordings:
        st.session_state["recording"] = recordings[0]
    recording = st.selectbox("Recording", recordings, key="recording")
    segments = frame[frame["path"] == recording]
    st.image(plots.png_bytes(plots.timeline(segments, title=recording)), width="stretch")
    candidates = shown[shown["path"] == recording]
    labels = [logic.describe_segment(r) for r in candidates.itertuples()]
    jump = st.session_state.pop("jump_start_s", None)
    if jump is not None:
        st.session_state["segment"] = int((candidates["start_s"] == jump).to_numpy().argmax())
    elif st.session_state.get("segment", 0) >= len(labels):
        st.session_state["segment"] = 0
    choice = st.selectbox("Segment", range(len(labels)), format_func=labels.__getitem__,
                          key="segment")
    segment = candidates.iloc[choice]
    play_segment(corpus_root, recording, float(segment["start_s"]), float(segment["end_s"]))


def _jump_to_selection(table: pd.DataFrame) -> None:
    """Open the recording and segment of the row selected in the table."""
    rows = st.session_state["table"].selection.rows
    if rows and rows[0] < len(table):
        row = table.iloc[rows[0]]
        st.session_state["recording"] = str(row["path"])
        st.session_state["jump_start_s"] = float(row["start_s"])


def play_segment(corpus_root: str, key: str, start_s: float, end_s: float) -> None:
    source = logic.resolve_audio(corpus_root, key)
    if source is None:
        where = Path(corpus_root or ".").expanduser().resolve() / key
        st.info(f"The audio is not at `{where}`. Set the corpus root in the sidebar to the "
                "folder given to `annotate run`.")
        return
    try:
        samples, rate = logic.segment_audio(source, start_s, end_s)
    except InputError as error:
        st.error(str(error))
        return
    st.audio(samples, sample_rate=rate)


main()
