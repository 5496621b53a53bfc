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
    each = features.segment_features_each(samples, settings)
    assert calls == [settings[0], settings[2]]  # the band-limited one reused the first STFT
    monkeypatch.undo()
    for ours, params in zip(each, settings, strict=True):
        assert np.array_equal(ours, segment_features(samples, params))
