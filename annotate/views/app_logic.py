"""What the ``annotate app`` does, as plain functions (no Streamlit here, so tests call them).

A clip from the microphone or an upload goes through the same steps as a
recording of ``annotate run``: :func:`~annotate.prepare.featurize.featurize_recording` and
:class:`~annotate.pipeline.annotator.Annotator`
over the same :class:`~annotate.modelling.model_set.ModelSet`, so the app shows exactly
the rows the batch run would write for that file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from annotate.audio.decode import probe, read_span
from annotate.audio.discover import (
    AUDIO_EXTENSIONS,
    UNSUPPORTED_AUDIO_EXTENSIONS,
    Failure,
    Recording,
)
from annotate.errors import InputError, UsageError
from annotate.features import FeatureParams, log_mel
from annotate.modelling.model_set import ModelSet
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import plan_run
from annotate.prepare.featurize import featurize_recording

TITLE = "Speech annotation explorer"
#: Largest upload accepted, in megabytes (also given to Streamlit's server).
MAX_UPLOAD_MB = 50
#: Longest clip annotated interactively; corpora go through ``annotate run``.
MAX_CLIP_S = 600.0
#: Environment variables read when the app is not given command-line options.
ENV_LANGUAGE_MODEL = "ANNOTATE_LANGUAGE_MODEL"
ENV_EMOTION_MODELS = "ANNOTATE_EMOTION_MODELS"  # LANG=DIR entries joined by os.pathsep
ENV_RESULTS = "ANNOTATE_RESULTS"
ENV_CORPUS_ROOT = "ANNOTATE_CORPUS_ROOT"
_COMMON_FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "aiff")


@dataclass(frozen=True)
class AppConfig:
    """What the app is started with: models, a results table, the corpus root.

    Attributes:
        language_model: A language model folder (None: the bundled one).
        emotion_models: ``(language, folder)`` pairs replacing bundled emotion models.
        results: A table written by ``annotate run`` to browse.
        corpus_root: The folder the table's paths are relative to.
    """

    language_model: str | None = None
    emotion_models: tuple[tuple[str, str], ...] = ()
    results: str | None = None
    corpus_root: str | None = None

    @classmethod
    def from_sources(cls, argv: list[str], environ: dict[str, str]) -> AppConfig:
        """Command-line options (after Streamlit's ``--``), else the environment.

        Raises:
            UsageError: A malformed ``LANG=DIR`` entry or an unknown option.
        """
        parser = argparse.ArgumentParser(prog="annotate app", add_help=False,
                                         exit_on_error=False)
        parser.add_argument("--language-model")
        parser.add_argument("--emotion-model", action="append", default=[])
        parser.add_argument("--results")
        parser.add_argument("--corpus-root")
        try:
            args = parser.parse_args(argv)
        except (argparse.ArgumentError, SystemExit) as error:
            raise UsageError(f"bad app arguments {argv}: {error}") from None
        emotion = args.emotion_model or [
            entry for entry in environ.get(ENV_EMOTION_MODELS, "").split(os.pathsep) if entry
        ]
        return cls(
            language_model=args.language_model or environ.get(ENV_LANGUAGE_MODEL) or None,
            emotion_models=tuple(parse_emotion_models(emotion).items()),
            results=args.results or environ.get(ENV_RESULTS) or None,
            corpus_root=args.corpus_root or environ.get(ENV_CORPUS_ROOT) or None,
        )

    def to_argv(self) -> list[str]:
        """The options that :meth:`from_sources` reads back (absolute paths)."""
        argv: list[str] = []
        if self.language_model:
            argv += ["--language-model", _absolute(self.language_model)]
        for code, folder in self.emotion_models:
            argv += ["--emotion-model", f"{code}={_absolute(folder)}"]
        if self.results:
            argv += ["--results", _absolute(self.results)]
        if self.corpus_root:
            argv += ["--corpus-root", _absolute(self.corpus_root)]
        return argv

    def load_models(self) -> ModelSet:
        """The models of this configuration (reads the folders; TensorFlow is not imported).

        Raises:
            ModelError: A folder is not a model, or there is no bundled model to fall back on.
        """
        return ModelSet.load(self.language_model, dict(self.emotion_models))


def parse_emotion_models(values: list[str]) -> dict[str, str]:
    """``["de=DIR", "*=DIR"]`` -> ``{"de": "DIR", "*": "DIR"}``.

    Raises:
        UsageError: An entry is not ``LANG=DIR``.
    """
    models = {}
    for value in values:
        code, sep, folder = value.partition("=")
        if not sep or not code or not folder:
            raise UsageError(
                f"bad emotion model {value!r}, expected LANG=DIR (e.g. de=models/my-de)")
        models[code] = folder
    return models


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


# --- a clip ---------------------------------------------------------------


@dataclass
class ClipResult:
    """A clip's annotation and what the app draws of it.

    Attributes:
        rows: The segments, exactly as ``annotate run`` would write them.
        duration_s: The clip's length.
        log_mel: np.ndarray [shape=(frames, n_mels)], the first model's features
            over the whole clip, for the spectrogram.
        features: The feature settings of ``log_mel``.
    """

    rows: pd.DataFrame
    duration_s: float
    log_mel: np.ndarray
    features: FeatureParams


def check_upload(name: str, size_bytes: int, max_mb: float = MAX_UPLOAD_MB) -> str:
    """Refuse an upload that is too large or not named like audio; return its extension.

    Raises:
        InputError: With a message for the user.
    """
    if size_bytes > max_mb * 1024 * 1024:
        raise InputError(
            f"{name} is {size_bytes / 1024 / 1024:.0f} MB; the app takes files up to "
            f"{max_mb:g} MB. Annotate large recordings with `annotate run`.", kind="too-large")
    if size_bytes == 0:
        raise InputError(f"{name} is empty (0 bytes)", kind="empty")
    ext = os.path.splitext(name)[1].lower().lstrip(".")
    if ext in UNSUPPORTED_AUDIO_EXTENSIONS:
        raise InputError(
            f"{name}: .{ext} files cannot be decoded here; convert it to WAV or FLAC "
            f"(e.g. `ffmpeg -i {name} clip.wav`)", kind="unsupported")
    if ext not in AUDIO_EXTENSIONS:
        shown = "none" if not ext else f".{ext}"
        raise InputError(
            f"{name} is not an audio file (type {shown}); upload a recording such as "
            + ", ".join(f".{e}" for e in _COMMON_FORMATS), kind="not-audio")
    return ext


class ClipAnnotator:
    """Annotates single clips with a run's models (loaded once, then reused).

    Args:
        models: The models, as ``annotate run`` loads them.
    """

    def __init__(self, models: ModelSet) -> None:
        self.models = models
        self._annotators: dict[tuple[float, float], Annotator] = {}
        self.annotator(3.0)  # load now: a broken model fails before the first clip

    def annotator(self, window_s: float, hop_s: float | None = None) -> Annotator:
        """The annotator of a default run with this window and hop (loaded once).

        Its plan is a default ``annotate run``'s (the cascade, when the language
        model records one), so that the app shows what a run writes.

        Raises:
            UsageError: Window or hop not positive.
        """
        hop_s = window_s if hop_s is None else hop_s
        if (window_s, hop_s) not in self._annotators:
            plan = plan_run(self.models, window_s=window_s, hop_s=hop_s)
            self._annotators[window_s, hop_s] = Annotator(plan, self.models).load()
        return self._annotators[window_s, hop_s]

    def annotate_file(self, source: str | Path, key: str, window_s: float = 3.0,
                      hop_s: float | None = None) -> pd.DataFrame:
        """The rows of one recording, through the batch pipeline's own steps.

        Raises:
            InputError: The file cannot be decoded (the failure a batch run would record).
            UsageError: Window or hop not positive.
        """
        annotator = self.annotator(window_s, hop_s)
        plan = annotator.plan
        features = featurize_recording(Recording(key, str(source)), plan.segments,
                                       annotator.models.feature_params, plan.chunk_s)
        if isinstance(features, Failure):
            raise _input_error(features)
        return annotator.annotate([features]).to_pandas()

    def annotate_upload(self, name: str, data: bytes, window_s: float = 3.0,
                        hop_s: float | None = None) -> ClipResult:
        """Check, decode and annotate an uploaded or recorded clip.

        Raises:
            InputError: Too large, not audio, undecodable or too long, with a
                message for the user.
        """
        ext = check_upload(name, len(data))
        with tempfile.TemporaryDirectory(prefix="annotate-app-") as folder:
            source = Path(folder) / f"clip.{ext}"
            source.write_bytes(data)
            try:
                info = probe(source)
            except InputError as error:
                raise InputError(f"{name} is not audio that can be decoded "
                                 f"({_reason(str(error))})", kind=error.kind) from None
            if info.duration_s > MAX_CLIP_S:
                raise InputError(
                    f"{name} lasts {info.duration_s / 60:.0f} min; the app takes clips up to "
                    f"{MAX_CLIP_S / 60:.0f} min. Annotate long recordings with `annotate run`.",
                    kind="too-long")
            rows = self.annotate_file(source, name, window_s, hop_s)
            params = self.models.feature_params[0]
            samples = read_span(source, info, 0.0, info.duration_s, params.sampling_rate)
        return ClipResult(rows, info.duration_s, log_mel(samples, params), params)


def _input_error(failure: Failure) -> InputError:
    return InputError(failure.message, kind=failure.error)


def _reason(message: str) -> str:
    # libsndfile's reason without the temporary file's path
    return message.rsplit(": ", 1)[-1].strip() or message


def clip_summary(rows: pd.DataFrame, top: int = 3) -> dict[str, pd.Series]:
    """The top labels of a whole clip: speech-time-weighted mean probabilities.

    Returns:
        ``{"language": Series, "emotion": Series}`` of the ``top`` labels by
        mean probability, highest first (empty without speech).
    """
    speech = rows[rows["speech"].fillna(False).astype(bool)]
    weights = (speech["end_s"] - speech["start_s"]).to_numpy(float)
    out = {}
    for task, prefix, skip in (("language", "lang_", "lang_p"), ("emotion", "emo_", None)):
        columns = [c for c in rows.columns if c.startswith(prefix) and c != skip]
        probs = speech[columns].astype(float)
        present = probs.notna()
        mass = (probs.fillna(0.0).mul(weights, axis=0)).sum()
        total = present.mul(weights, axis=0).sum()
        means = (mass / total.replace(0.0, np.nan)).dropna()
        means.index = [c.removeprefix(prefix) for c in means.index]
        out[task] = means.sort_values(ascending=False).head(top)
    return out


# --- a results table --------------------------------------------------------


def check_results(path: str | Path) -> Path:
    """A results table's path, after checking it is one (reads only the schema).

    Raises:
        UsageError: Missing, unreadable or not written by ``annotate run``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"no such table: {path}")
    try:
        names = pq.read_schema(path).names
    except Exception as error:  # noqa: BLE001 - any unreadable file is a usage error here
        raise UsageError(f"{path} is not a readable Parquet file: {error}") from None
    missing = {"path", "start_s", "end_s", "speech", "lang", "emotion"} - set(names)
    if missing:
        raise UsageError(f"{path} is not an annotate table: it lacks {sorted(missing)}")
    return path


def filter_segments(
    frame: pd.DataFrame,
    languages: list[str] | None = None,
    emotions: list[str] | None = None,
    min_language_p: float = 0.0,
    min_emotion_p: float = 0.0,
    path_contains: str = "",
    speech_only: bool = True,
) -> pd.DataFrame:
    """The segments that pass every filter (an empty or zero filter lets all through)."""
    keep = np.ones(len(frame), dtype=bool)
    if speech_only:
        keep &= frame["speech"].fillna(False).to_numpy(bool)
    if languages:
        keep &= frame["lang"].isin(languages).to_numpy()
    if emotions:
        keep &= frame["emotion"].isin(emotions).to_numpy()
    if min_language_p > 0:
        keep &= (frame["lang_p"] >= min_language_p).fillna(False).to_numpy(bool)
    if min_emotion_p > 0:
        keep &= (frame["emotion_p"] >= min_emotion_p).fillna(False).to_numpy(bool)
    if path_contains:
        keep &= frame["path"].astype(str).str.contains(path_contains, case=False,
                                                       regex=False).to_numpy()
    return frame[keep]


def resolve_audio(corpus_root: str | Path | None, key: str) -> Path | None:
    """The file behind a table's ``path`` (relative to the corpus root), if it is there."""
    candidate = Path(key)
    if not candidate.is_absolute():
        candidate = Path(corpus_root or ".").expanduser() / candidate
    return candidate if candidate.is_file() else None


def segment_audio(source: str | Path, start_s: float, end_s: float) -> tuple[np.ndarray, int]:
    """One segment of a recording, mono at its own sampling rate, for playback.

    Returns:
        ``(samples [shape=(n,), float32], sampling rate in Hz)``.

    Raises:
        InputError: The file cannot be decoded.
    """
    source = Path(source)
    info = probe(source)
    samples = read_span(source, info, start_s, min(end_s, info.duration_s), info.sampling_rate)
    return samples, info.sampling_rate


def describe_segment(row) -> str:
    """A one-line label of a segment for pickers: times, language, emotion."""
    text = f"{row.start_s:.1f}–{row.end_s:.1f} s"
    if isinstance(row.lang, str):
        text += f" · {row.lang} {row.lang_p:.2f}"
    else:
        text += " · no speech"
    if isinstance(row.emotion, str):
        text += f" · {row.emotion} {row.emotion_p:.2f}"
    return text


__all__ = [
    "AppConfig",
    "ClipAnnotator",
    "ClipResult",
    "check_results",
    "check_upload",
    "clip_summary",
    "describe_segment",
    "filter_segments",
    "parse_emotion_models",
    "resolve_audio",
    "segment_audio",
]
