"""The speech detector: Silero VAD by default, the energy gate on request.

Generated audio only: tones, chords, drum-like bursts and noise are loud and
vary, so the energy gate calls them speech; the learned detector must not.
Synthetic voices and the example corpus's recordings are speech.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import write_audio

import annotate
from annotate.audio.decode import probe, read_span
from annotate.audio.discover import Recording
from annotate.errors import ModelError
from annotate.prepare import speech as detection
from annotate.prepare.featurize import SegmentSettings, featurize_recording
from annotate.prepare.silero import SileroVAD
from annotate.prepare.speech import detect_speech
from annotate.schema import load_schema
from annotate.testing import TEST_FEATURES, speech_like, tone, voice

SR = 16000
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "corpus"


def chord(seconds: float) -> np.ndarray:
    """A sustained major triad with a slow swell (an organ or a pad)."""
    t = np.arange(int(seconds * SR)) / SR
    notes = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    return (0.2 * notes * (0.7 + 0.3 * np.sin(2 * np.pi * 0.25 * t))).astype(np.float32)


def drums(seconds: float, seed: int = 0) -> np.ndarray:
    """Decaying low noise bursts twice a second (a kick and a snare)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n)
    hit = np.exp(-np.arange(int(0.2 * SR)) / (0.03 * SR))
    for k, start in enumerate(range(0, n - len(hit), SR // 2)):
        body = rng.standard_normal(len(hit)) if k % 2 else np.sin(
            2 * np.pi * 60 * np.arange(len(hit)) / SR)
        out[start : start + len(hit)] += 0.6 * hit * body
    return out.astype(np.float32)


def noise(seconds: float, colour: str, seed: int = 0) -> np.ndarray:
    """White or pink noise at a fifth of full scale."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * SR))
    if colour == "white":
        return (0.2 * white).astype(np.float32)
    spectrum = np.fft.rfft(white) / np.sqrt(np.arange(1, len(white) // 2 + 2))
    pink = np.fft.irfft(spectrum, len(white))
    return (0.2 * pink / pink.std()).astype(np.float32)


def decide(audio: np.ndarray, detector: str = "silero", threshold: float = 0.5):
    starts = np.arange(0, len(audio), 3 * SR)
    bounds = np.stack([starts, np.minimum(starts + 3 * SR, len(audio))], axis=1)
    return detect_speech(audio, 0, bounds, SR, detector, threshold)


NOT_SPEECH = {
    "tone": lambda: tone(9.0),
    "chord": lambda: chord(9.0),
    "drums": lambda: drums(9.0),
    "white noise": lambda: noise(9.0, "white"),
    "pink noise": lambda: noise(9.0, "pink"),
}


@pytest.mark.parametrize("name", sorted(NOT_SPEECH))
def test_music_like_sounds_and_noise_are_not_speech(name):
    decisions = decide(NOT_SPEECH[name]())
    assert not decisions.speech.any(), (name, decisions.probability, decisions.seconds)
    assert (decisions.seconds < 0.25).all()


def test_the_energy_gate_takes_loud_varying_sounds_for_speech():
    """Why the default changed: the old gate hears drums and noise as speech."""
    assert decide(drums(9.0), "energy", -45.0).speech.all()
    pulsing = noise(9.0, "white") * np.resize(np.repeat([1.0, 0.3], SR // 4), 9 * SR)
    assert decide(pulsing.astype(np.float32), "energy", -45.0).speech.all()
    assert np.isnan(decide(drums(9.0), "energy", -45.0).probability).all()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_speech_like_signals_are_speech(seed):
    decisions = decide(speech_like(9.0, seed=seed))
    assert decisions.speech.all(), decisions.probability
    assert (decisions.probability > 0.9).all() and (decisions.seconds > 1.0).all()
    assert decide(voice(3.0, 120.0, seed)).speech.all()


def test_the_example_corpus_speech_is_speech_and_its_silence_is_not():
    settings = SegmentSettings()
    for path in sorted(EXAMPLES.rglob("*.*")):
        done = featurize_recording(Recording(path.name, str(path)), settings, (TEST_FEATURES,))
        if path.name == "silence.wav":
            assert not done.speech.any() and (done.speech_s == 0).all()
        else:
            assert done.speech.all(), (path.name, done.speech_p, done.speech_s)
            assert (done.speech_p > 0.9).all()


def test_speech_seconds_follow_where_speech_is():
    """Two seconds of voice in the middle of a music bed: about two seconds of speech."""
    bed = 0.3 * chord(6.0)
    bed[2 * SR : 4 * SR] += speech_like(2.0, seed=5)
    decisions = decide(bed)
    assert decisions.speech.tolist() == [True, True]
    assert 1.4 <= decisions.seconds.sum() <= 2.3


def test_decisions_do_not_depend_on_how_a_recording_is_chunked(tmp_path):
    audio = np.concatenate([speech_like(7.0, seed=6), chord(5.0), speech_like(6.5, seed=7),
                            noise(4.0, "pink")])
    write_audio(tmp_path / "long.wav", audio, SR)
    recording = Recording("long.wav", str(tmp_path / "long.wav"))
    whole = featurize_recording(recording, SegmentSettings(), (TEST_FEATURES,), chunk_s=120.0)
    chunked = featurize_recording(recording, SegmentSettings(), (TEST_FEATURES,), chunk_s=6.0)
    # A fresh stream per chunk hears 0.5 s before it: the same decisions, and the same
    # probabilities where there is speech (near the threshold, context moves them more).
    np.testing.assert_array_equal(whole.speech, chunked.speech)
    assert whole.speech[[0, 1, 4, 5]].all() and not whole.speech[3]  # voice, voice, chord
    np.testing.assert_allclose(whole.speech_p[whole.speech], chunked.speech_p[whole.speech],
                               atol=0.01)
    clear = [0, 1, 3, 4, 5]  # inside the voices and the chord, away from a change of sound
    np.testing.assert_allclose(whole.speech_s[clear], chunked.speech_s[clear], atol=0.2)


def test_a_run_writes_the_detector_columns_and_skips_non_speech(tmp_path, model_args):
    corpus = tmp_path / "corpus"
    write_audio(corpus / "talk.wav", speech_like(4.0, seed=8), SR)
    write_audio(corpus / "music.wav", chord(6.0), SR)
    write_audio(corpus / "drums.wav", drums(6.0), SR)
    out = tmp_path / "out.parquet"
    annotate.run([corpus], out, jobs=1, **model_args)
    rows = pd.read_parquet(out)
    names = [c["name"] for c in load_schema("segments")["columns"]]
    assert names.index("speech_p") == names.index("speech") + 1
    assert list(rows.columns[3:6]) == ["speech", "speech_p", "speech_s"]
    talk, other = rows[rows["path"] == "talk.wav"], rows[rows["path"] != "talk.wav"]
    assert talk["speech"].all() and talk["lang"].notna().all()
    assert not other["speech"].any() and other["lang"].isna().all()
    assert (other["speech_s"] == 0).all() and (other["speech_p"] < 0.5).all()
    metadata = json.loads(pq.read_schema(out).metadata[b"annotate"])
    assert metadata["speech_detector"]["name"] == "silero-vad"
    assert metadata["speech_detector"]["sha256"] == detection._silero().spec["sha256"]


@pytest.mark.parametrize("part", ["encoder", "recurrent"])
def test_a_tampered_detector_is_refused(tmp_path, part):
    folder = tmp_path / "silero-vad"
    shutil.copytree(detection._silero().path.parent, folder)
    SileroVAD(folder)  # the copy is intact
    model = folder / json.loads((folder / "detector.json").read_text())[part]
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match="SHA-256"):
        SileroVAD(folder)


def published_export(audio: np.ndarray) -> np.ndarray:
    """Silero's frame probabilities from its published export, one ONNX Runtime call."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(detection._silero().path),
                                   providers=["CPUExecutionProvider"])
    count = -(-len(audio) // 512)
    frames = np.zeros((count, 512), np.float32)
    frames.reshape(-1)[: len(audio)] = audio
    rows = np.concatenate([np.zeros((count, 64), np.float32), frames], axis=1)
    rows[1:, :64] = frames[:-1, -64:]
    state = np.zeros((1, 1, 128), np.float32)
    probs, _, _ = session.run(None, {"input": rows, "h": state, "c": state})
    return probs.reshape(-1)


def test_the_detector_computes_what_the_published_export_does():
    # Long enough for several blocks; speech, music, noise and silence, and a
    # length that is not a whole number of frames.
    audio = np.concatenate([speech_like(20.0, seed=3), chord(15.0), noise(10.0, "pink"),
                            np.zeros(SR, np.float32), speech_like(25.3, seed=4)])
    ours = detection._silero().probabilities(audio)
    theirs = published_export(audio)
    assert ours.shape == theirs.shape == (-(-len(audio) // 512),)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert 0.01 < (theirs > 0.5).mean() < 0.99  # the comparison covers both decisions


def test_a_threshold_must_fit_its_detector():
    with pytest.raises(ValueError, match="--speech-detector energy"):
        detection.check_threshold("silero", -45.0)
    with pytest.raises(ValueError, match="dBFS"):
        detection.check_threshold("energy", 0.5)
    detection.check_threshold("silero", 0.3)
    detection.check_threshold("energy", -60.0)


def test_segments_silero_is_unsure_of_are_marked_for_the_second_stage():
    frame = 512
    starts = frame * np.arange(3 * 94)  # three segments of 94 frames (3.008 s each)
    probs = np.full(len(starts), 0.02)
    probs[10:40] = 0.9  # segment 0: speech
    probs[100:104] = 0.3  # segment 1: frames in the band, none above the threshold
    probs[200:203] = 0.6  # segment 2: above the threshold, but 0.096 s of it only
    bounds = np.array([[0, 94], [94, 188], [188, 282]]) * frame
    decided = detection.decide_segments(probs, starts, frame, bounds, SR, 0.5, unsure_p=0.15)
    assert decided.speech.tolist() == [True, False, False]
    assert decided.unsure.tolist() == [False, True, True]
    np.testing.assert_allclose(decided.unsure_s, np.array([30, 4, 3]) * frame / SR)
    np.testing.assert_allclose(decided.probability, [0.9, 0.3, 0.6])
    alone = detection.decide_segments(probs, starts, frame, bounds, SR, 0.5)
    assert not alone.unsure.any() and alone.speech.tolist() == [True, False, False]
    np.testing.assert_array_equal(alone.seconds, decided.seconds)
    quiet = detection.decide_segments(np.full(len(starts), 0.1), starts, frame, bounds, SR,
                                      0.5, unsure_p=0.15)
    assert not quiet.unsure.any()


def test_the_bundled_speech_head_hears_speech_and_not_music_or_noise():
    """The shipped second stage, on the states of the shipped backbone."""
    from annotate.backbone.runtime import Backbone
    from annotate.features import features_of_segments
    from annotate.modelling.backbone_folder import read_backbone_folder
    from annotate.modelling.speech_head import bundled_speech_head
    from annotate.resources import resource_dir

    head = bundled_speech_head()
    spec = read_backbone_folder(resource_dir("models") / head.backbone)
    assert spec.pooled_width == head.width and head.threshold >= 0.5
    params = spec.features
    # Real speech only: the synthetic voices of annotate.testing fool Silero, not Whisper.
    speech = []
    for path in sorted(EXAMPLES.rglob("*.*")):
        if path.name != "silence.wav":  # the example corpus's speech, its first 3 s
            info = probe(path)
            first = read_span(path, info, 0.0, min(3.0, info.duration_s), SR)
            speech.append(np.pad(first, (0, 3 * SR - len(first))))
    other = [chord(3.0), drums(3.0), noise(3.0, "white"), noise(3.0, "pink"), tone(3.0)]
    stacks = [features_of_segments(np.stack(speech + other), (params,))[0]]
    frames = np.full(len(speech) + len(other), params.n_frames)
    runner = Backbone(spec, (head.layer,), "litert", params.n_frames).load()
    p = head.probability(runner.pooled(stacks, frames)[:, 0])
    assert (p[: len(speech)] >= head.threshold).all(), p
    assert (p[len(speech):] < head.threshold).all(), p
