"""Tests of the log-mel features every model sees."""

# Test names say what each test checks.
# ruff: noqa: D103

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from annotate.features import FeatureParams, _mel_basis, log_mel, segment_features
from annotate.testing import speech_like


@pytest.mark.parametrize("settings", [
    {}, {"n_mels": 32}, {"fmin_hz": 300.0, "fmax_hz": 3400.0},
    {"sampling_rate": 8000, "n_fft": 256, "fmax_hz": 4000.0},
])
def test_mel_filterbank_is_librosas_bit_for_bit(settings):
    import librosa  # a dependency of annotate: the reference
    params = FeatureParams(**settings)
    reference = librosa.filters.mel(sr=params.sampling_rate, n_fft=params.n_fft,
                                    n_mels=params.n_mels, fmin=params.fmin_hz,
                                    fmax=params.fmax_hz)
    assert np.array_equal(_mel_basis(params), reference)


def test_log_mel_matches_librosa_power_mel_spectrogram():
    import librosa
    params = FeatureParams()
    samples = speech_like(2.0, params.sampling_rate, seed=4)
    reference = librosa.feature.melspectrogram(
        y=samples, sr=params.sampling_rate, n_fft=params.n_fft, hop_length=params.hop_length,
        win_length=params.win_length, window="hann", center=True, pad_mode="reflect",
        power=2.0, n_mels=params.n_mels, fmin=params.fmin_hz, fmax=params.fmax_hz,
    )
    ours = log_mel(samples, params)
    assert ours.shape == (reference.shape[1], params.n_mels)
    assert np.allclose(ours, np.log(np.maximum(reference.T, 1e-10)), atol=1e-3)


def test_segment_features_have_the_model_input_shape():
    params = FeatureParams()
    for seconds in (0.4, 3.0, 3.7):
        features = segment_features(speech_like(seconds, params.sampling_rate, seed=1), params)
        assert features.shape == (params.n_frames, params.n_mels)
        assert features.dtype == np.float32


def test_feature_workers_do_not_import_librosa():
    # librosa.filters costs each worker 1-4 s at start-up; the filterbank is ours.
    code = ("import sys; from annotate.features import FeatureParams, segment_features; "
            "import numpy as np; segment_features(np.random.default_rng(0).standard_normal(48000)"
            ".astype('float32'), FeatureParams()); sys.exit('librosa' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_settings_that_share_a_frame_layout_share_the_stft_and_give_the_same_features(
    monkeypatch,
):
    from annotate import features

    samples = speech_like(3.0, 16000, seed=2)
    settings = (FeatureParams(), FeatureParams(fmin_hz=300.0, fmax_hz=3400.0, n_mels=40),
                FeatureParams(hop_s=0.02))
    calls = []
    real = features.power_spectrum
    monkeypatch.setattr(features, "power_spectrum", lambda x, p: calls.append(p) or real(x, p))
    each = features.features_of_segments(samples[None], settings)
    assert calls == [settings[0], settings[2]]  # the band-limited one reused the first STFT
    monkeypatch.undo()
    for ours, params in zip(each, settings, strict=True):
        assert np.array_equal(ours[0], segment_features(samples, params))


@pytest.mark.parametrize("seconds", [3.0, 0.01, 0.03, 1.3])
def test_a_stack_of_segments_gets_the_bits_each_segment_gets_alone(seconds):
    from annotate.features import features_of_segments

    settings = (FeatureParams(fmax_hz=3800.0), FeatureParams(fmax_hz=7800.0, n_mels=40))
    n = int(seconds * 16000)
    stack = np.stack([speech_like(seconds + 0.1, 16000, seed=i)[:n] for i in range(5)])
    stack[3] *= 1e-4  # a quiet one
    for params, ours in zip(settings, features_of_segments(stack, settings), strict=True):
        assert ours.shape == (5, params.n_frames, params.n_mels)
        for row, segment in zip(ours, stack, strict=True):
            assert np.array_equal(row, segment_features(segment, params))


def test_speech_mask_decides_each_segment_as_is_speech_does():
    from annotate.prepare.segment import is_speech, speech_mask

    rng = np.random.default_rng(0)
    t = np.arange(48000) / 16000
    stack = np.stack([
        speech_like(3.0, 16000, seed=1),
        np.zeros(48000, np.float32),                            # silence
        np.full(48000, 0.3, np.float32),                        # DC
        (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),  # a steady tone
        (1e-4 * rng.standard_normal(48000)).astype(np.float32),  # hiss below the threshold
        np.concatenate([np.zeros(40000), 0.5 * rng.standard_normal(8000)]).astype(np.float32),
    ])
    mask = speech_mask(stack, 16000)
    assert mask.tolist() == [is_speech(segment, 16000) for segment in stack]
    assert mask.tolist() == [True, False, False, False, False, True]


def test_a_chunk_gets_each_segments_own_features_and_speech_decision(tmp_path):
    from annotate.audio.decode import read_span
    from annotate.audio.discover import Recording
    from annotate.prepare.featurize import SegmentSettings, featurize_chunk, plan_chunks
    from annotate.prepare.segment import is_speech

    audio = speech_like(20.5, 16000, seed=3)
    audio[16000 * 6 : 16000 * 9] = 0.0  # one silent segment
    path = tmp_path / "a.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    settings = SegmentSettings(window_s=3.0, hop_s=2.0)  # overlapping, a partial last one
    params = (FeatureParams(fmax_hz=3800.0), FeatureParams())
    (chunk,) = plan_chunks(0, Recording("a.wav", str(path)), settings, 600.0)
    result = featurize_chunk(chunk, settings, params)
    samples = read_span(path, chunk.info, 0.0, chunk.info.duration_s, 16000)
    segments = [samples[int(round(a * 16000)) : int(round(b * 16000))] for a, b in result.bounds]
    assert len({len(s) for s in segments}) == 2  # full windows and the partial last one
    expected_speech = [is_speech(s, 16000) for s in segments]
    assert result.speech.tolist() == expected_speech and not all(expected_speech)
    for p in params:
        expected = [segment_features(s, p) for s, keep in zip(segments, expected_speech) if keep]
        assert np.array_equal(result.features[p], np.stack(expected))
