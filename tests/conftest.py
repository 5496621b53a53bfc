"""Shared fixtures: generated audio and tiny model folders (no real corpora, no network)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from annotate.testing import create_model_folder, speech_like, tone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests choose their models explicitly: hide the bundled ones (subprocesses
# inherit this). test_bundled_models.py checks the bundled models themselves.
BUNDLED_MODELS_HIDDEN = tempfile.mkdtemp(prefix="annotate-no-bundled-models-")
os.environ["ANNOTATE_MODELS"] = BUNDLED_MODELS_HIDDEN

def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/example_table.json from this checkout's run")


LANGUAGES = ["en", "de", "fr", "it"]
EMODB_LABELS = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
FALLBACK_LABELS = ["anger", "happiness", "neutral", "sadness"]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny model folders in the real format: a language model and two emotion models."""
    root = tmp_path_factory.mktemp("models")
    create_model_folder(root / "language", "language", LANGUAGES, seed=1)
    create_model_folder(root / "emotion-de", "emotion", EMODB_LABELS, languages=["de"], seed=2)
    create_model_folder(root / "emotion-multi", "emotion", FALLBACK_LABELS, seed=3)
    return {
        "language": root / "language",
        "emotion-de": root / "emotion-de",
        "emotion-multi": root / "emotion-multi",
    }


@pytest.fixture(scope="session")
def model_args(models) -> dict:
    """Keyword arguments for ``annotate.run`` that select the tiny models."""
    return {
        "language_model": models["language"],
        "emotion_models": {"de": models["emotion-de"], "*": models["emotion-multi"]},
    }


@pytest.fixture(scope="session")
def model_cli_args(models) -> list[str]:
    """The same models as command-line options."""
    return [
        "--language-model", str(models["language"]),
        "--emotion-model", f"de={models['emotion-de']}",
        "--emotion-model", f"*={models['emotion-multi']}",
    ]


def write_audio(path: Path, samples: np.ndarray, sampling_rate: int, **kwargs) -> Path:
    """Write audio in the format implied by the file name (wav, flac, ogg, mp3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sampling_rate, **kwargs)
    return path


@pytest.fixture
def mixed_corpus(tmp_path) -> Path:
    """A small corpus of several formats, rates and channel counts, plus silence and a tone."""
    root = tmp_path / "corpus"
    write_audio(root / "speech_16k.wav", speech_like(7.5, 16000, seed=1), 16000)
    write_audio(root / "nested/deeper/speech_8k.WAV", speech_like(4.0, 8000, seed=2), 8000)
    stereo = np.stack([speech_like(5.0, 44100, seed=3), speech_like(5.0, 44100, seed=4)], axis=1)
    write_audio(root / "nested/stereo_44k.flac", stereo, 44100, subtype="PCM_24")
    write_audio(root / "speech_48k.mp3", speech_like(3.5, 48000, seed=5), 48000)
    write_audio(root / "speech.ogg", speech_like(2.0, 16000, seed=6), 16000)
    write_audio(root / "short.wav", speech_like(1.2, 16000, seed=7), 16000)
    write_audio(root / "silence.wav", np.zeros(16000 * 4, np.float32), 16000)
    write_audio(root / "tone.wav", tone(3.0), 16000)
    (root / "notes.tsv").write_text("not\taudio\n")
    (root / "README.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def two_recordings(tmp_path_factory) -> Path:
    """A folder with a 7.5 s and a 1.6 s speech-like recording."""
    folder = tmp_path_factory.mktemp("corpus")
    write_audio(folder / "long.wav", speech_like(7.5, seed=1), 16000)
    write_audio(folder / "short.wav", speech_like(1.6, seed=2), 16000)
    return folder


def sorted_table(path) -> pd.DataFrame:
    """A segments table in a fixed order (by path, then start)."""
    return pd.read_parquet(path).sort_values(["path", "start_s"]).reset_index(drop=True)


def run_metadata(path) -> dict:
    """The ``annotate`` metadata of a run's output."""
    return json.loads(pq.read_schema(path).metadata[b"annotate"])


def speech_counts(paths, params) -> tuple[int, int]:
    """Recordings with speech, and speech segments, as training and evaluation cut them.

    The run's speech detector decides: a synthetic voice's short clip may hold
    no speech for it, and evaluation then leaves that recording out.
    """
    from annotate.audio.discover import Recording
    from annotate.prepare.featurize import SegmentSettings, featurize_recording

    settings = SegmentSettings(window_s=params.segment_s, hop_s=params.segment_s,
                               sampling_rate=params.sampling_rate)
    recordings = segments = 0
    for path in paths:
        done = featurize_recording(Recording(str(path), str(path)), settings, (params,))
        if hasattr(done, "speech") and done.speech.any():
            recordings += 1
            segments += int(done.speech.sum())
    return recordings, segments
