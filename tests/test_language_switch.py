"""A recording that switches language, labelled by the bundled models segment by segment.

The speech is Debian's espeak-ng (``make test`` installs it when missing):
German, then English, sentences of our own (the language head's synthetic
training speech reads Common Voice sentences). Synthetic speech is no
measure of accuracy on real speakers (docs/accuracy.md has that); it shows
that the labels follow the speech along a recording and that smoothing
keeps the switch.
"""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr

import annotate
from annotate.resources import resource_dir
from annotate.views.report import aggregate

GERMAN = ("Guten Morgen. Heute fahren wir mit dem Zug nach Hamburg, weil meine Schwester "
          "dort Geburtstag feiert. Das Wetter soll schön werden, und wir wollen am Hafen "
          "spazieren gehen. Am Abend essen wir zusammen in einem kleinen Restaurant.")
ENGLISH = ("Good morning. Today we are taking the train to London, because my sister is "
           "celebrating her birthday there. The weather should be nice, and we want to walk "
           "along the river. In the evening we will have dinner in a small restaurant.")


def espeak(text: str, voice: str) -> np.ndarray:
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.fail("espeak-ng is needed to make speech in two languages: install it "
                    "(Debian/Ubuntu: `apt-get install -y espeak-ng`) and run the tests again")
    done = subprocess.run([binary, "-v", voice, "--stdout", text], capture_output=True,
                          check=True)
    samples, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    return soxr.resample(samples, rate, 16000).astype(np.float32)


@pytest.fixture(scope="module")
def switching(tmp_path_factory):
    folder = tmp_path_factory.mktemp("switch")
    german, english = espeak(GERMAN, "de"), espeak(ENGLISH, "en-us")
    pause = np.zeros(int(0.4 * 16000), np.float32)
    sf.write(folder / "de-en.wav", np.concatenate([german, pause, english]), 16000)
    return folder / "de-en.wav", (len(german) + len(pause) / 2) / 16000


def test_language_follows_the_speech_segment_by_segment(switching, tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATE_MODELS", str(resource_dir("models")))
    path, switch_s = switching
    out = tmp_path / "out.parquet"
    annotate.run([path], out, jobs=1)
    rows = pd.read_parquet(out)
    speech = rows[rows["speech"]]
    truth = np.where(speech["end_s"] <= switch_s, "de",
                     np.where(speech["start_s"] >= switch_s, "en", None))
    away = (speech["end_s"] <= switch_s - 3.0) | (speech["start_s"] >= switch_s + 3.0)
    correct = (speech["lang"].to_numpy() == truth)[away.to_numpy()]
    assert len(correct) >= 6
    assert correct.mean() >= 0.9, speech[["start_s", "end_s", "lang", "lang_p"]]
    # The report's timeline for the recording holds both runs, German first.
    timeline = aggregate(out, recordings=[path.name]).timelines[path.name]
    runs = [label for label, _ in itertools.groupby(timeline.dropna(subset=["lang"])["lang"])]
    assert runs[0] == "de" and runs[-1] == "en"


def test_each_stretch_gets_its_own_languages_emotion_model(switching, tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATE_MODELS", str(resource_dir("models")))
    path, switch_s = switching
    out = tmp_path / "out.parquet"
    annotate.run([path], out, jobs=1)
    speech = pd.read_parquet(out).query("speech")
    models = {"de": "emotion-de", "en": "emotion-en"}
    # Every segment is labelled by the model of its own (smoothed) language ...
    assert (speech["emotion_model"] == speech["lang"].map(models)).all(), \
        speech[["start_s", "lang", "emotion_model"]]
    # ... so the German stretch gets the German model and the English one the English model.
    assert set(speech.loc[speech["end_s"] <= switch_s - 3.0, "emotion_model"]) == {"emotion-de"}
    assert set(speech.loc[speech["start_s"] >= switch_s + 3.0, "emotion_model"]) == {"emotion-en"}
    present = [c for c in speech.columns if c.startswith("emo_")]
    german = speech[speech["emotion_model"] == "emotion-de"]
    assert german["emo_calm"].isna().all() and german[present].notna().sum(axis=1).eq(7).all()
