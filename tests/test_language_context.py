"""Whisper's context (one padded window) for the stretches of a recording a run stays unsure of."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

from annotate.backbone.runtime import Backbone
from annotate.backbone.whisper_language import LANGUAGE_CODES
from annotate.errors import ModelError
from annotate.features import (
    WHISPER_CONTEXT_FRAMES,
    WHISPER_FEATURES,
    log_mel,
    normalise,
    whisper_context,
    whisper_log_mel,
)
from annotate.modelling.backbone_folder import read_backbone_folder
from annotate.modelling.language_fusion import choose_context, fit_context
from annotate.modelling.language_source import (
    CONTEXT_WINDOWS_A_CALL,
    CascadeLanguage,
    ContextInput,
    ContextStep,
    WhisperLanguage,
)
from annotate.modelling.model_folder import LanguageCascade, read_model_folder
from annotate.modelling.model_set import ModelSet
from annotate.modelling.posteriors import (
    fuse_language,
    language_stretches,
    smooth_language,
    softmax,
)
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import plan_run
from annotate.prepare.featurize import RecordingFeatures
from annotate.testing import create_backbone_folder, create_head_folder

LANGUAGES = ["de", "en", "fr", "it"]


def test_the_window_is_the_joined_speech_normalised_and_padded_as_whisper_does():
    rng = np.random.default_rng(0)
    loud, quiet = rng.normal(size=32000) * 0.1, rng.normal(size=48000) * 0.01
    # Each segment's features are normalised against its own maximum ...
    window = whisper_context([whisper_log_mel(loud), whisper_log_mel(quiet)])
    # ... the window as Whisper computes it: one normalisation, silence after the speech.
    silence = np.full((WHISPER_CONTEXT_FRAMES - 500, 80), np.log(1e-10), np.float32)
    joined = np.concatenate([log_mel(loud, WHISPER_FEATURES), log_mel(quiet, WHISPER_FEATURES),
                             silence])
    np.testing.assert_allclose(window, normalise(joined, WHISPER_FEATURES), atol=1e-6)
    # Speech past the window is dropped.
    long = [whisper_log_mel(rng.normal(size=16000 * 20) * 0.1) for _ in range(2)]
    assert whisper_context(long).shape == (WHISPER_CONTEXT_FRAMES, 80)
    np.testing.assert_array_equal(whisper_context(long)[:2000], whisper_context(long[:1])[:2000])


def test_stretches_follow_the_language_and_end_where_the_window_does():
    labels = np.array([0, 0, 0, 1, 1, 0])
    frames = np.full(6, 300)
    runs = language_stretches(labels, frames, max_frames=3000)
    assert [r.tolist() for r in runs] == [[0, 1, 2], [3, 4], [5]]
    runs = language_stretches(labels, frames, max_frames=600)
    assert [r.tolist() for r in runs] == [[0, 1], [2], [3, 4], [5]]
    assert language_stretches(np.zeros(0, int), np.zeros(0, int), 3000) == []


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("context")
    spec = create_backbone_folder(root / "tiny-whisper", n_layers=3, litert_blocks=2,
                                  language=True)
    create_head_folder(root / "emotion-multi", "emotion", ["happiness", "neutral"], spec,
                       layers=(0, 1), seed=3)
    return spec


def models_with(backbone, name, context_threshold, context_weight=0.8,
                window=WHISPER_CONTEXT_FRAMES):
    folder = backbone.folder.parent / name
    cascade = LanguageCascade(0.9, 0.6, 0.9, "tests", context_threshold=context_threshold,
                              context_weight=context_weight, context_window_frames=window)
    create_head_folder(folder, "language", LANGUAGES, backbone, layers=(2,),
                       languages=LANGUAGES, switch_probability=0.05, seed=1, cascade=cascade)
    return ModelSet.load(language_model=folder,
                         emotion_models={"*": backbone.folder.parent / "emotion-multi"}
                         ).with_window(1.0)


def a_recording(params):
    rng = np.random.default_rng(4)
    bounds = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 3.5], [3.5, 4.0]])
    speech = np.array([True, True, True, False, True])
    stack = (rng.standard_normal((4, params.n_frames, params.n_mels)) * 0.3).astype(np.float32)
    return RecordingFeatures("r.wav", bounds, speech, {params: [stack]})


def language_columns(models, recording) -> np.ndarray:
    plan = plan_run(models, window_s=1.0, language_id="cascade")
    rows = Annotator(plan, models).load().annotate([recording]).to_pandas()
    return rows.loc[rows["speech"], [f"lang_{c}" for c in LANGUAGES]].to_numpy()


def test_unsure_stretches_are_fused_with_whispers_context_before_the_smoothing(backbone):
    never = models_with(backbone, "never", 0.0)
    always = models_with(backbone, "always", 1.0, context_weight=0.8)
    params = never.language.features
    recording = a_recording(params)
    before = language_columns(never, recording)
    # Undo the smoothing to get the cascade's own probabilities back: run
    # without smoothing through a model folder that has none.
    plain = dataclasses.replace(never.language, switch_probability=None)
    unsmoothed = dataclasses.replace(never, language=plain)
    cascade = language_columns(unsmoothed, recording)
    np.testing.assert_allclose(smooth_language(cascade, 0.05), before, atol=1e-9)

    # What the context step should do, from its parts.
    speech = recording.bounds[recording.speech]
    frames = params.segment_frames(speech[:, 1] - speech[:, 0])
    rows = recording.features[params][0]
    runs = language_stretches(smooth_language(cascade, 0.05).argmax(axis=1), frames, 3000)
    spec = never.backbones["tiny-whisper"]
    runner = Backbone(spec, (0,), "litert", params.n_frames)
    tokens = [LANGUAGE_CODES.index(c) for c in LANGUAGES]
    want = cascade.copy()
    for run in runs:
        logits = runner.context_language(whisper_context([rows[i][: frames[i]] for i in run]))
        context = softmax(logits[None, tokens].astype(float), spec.language.temperature)
        want[run] = fuse_language(cascade[run], np.repeat(context, len(run), 0), 1.0, 0.8)
    got = language_columns(always, recording)
    np.testing.assert_allclose(got, smooth_language(want, 0.05), atol=1e-6)
    assert np.abs(got - before).max() > 1e-3


def test_context_on_litert_and_keras_agree(backbone):
    rng = np.random.default_rng(2)
    window = (rng.standard_normal((WHISPER_CONTEXT_FRAMES, 16)) * 0.3).astype(np.float32)
    litert = Backbone(backbone, (0,), "litert", 100).context_language(window)
    keras = Backbone(backbone, (0,), "keras", 100).context_language(window)
    assert litert.shape == (99,)
    np.testing.assert_allclose(litert, keras, atol=0.05)


def test_the_context_step_borrows_the_lanes_interpreters_and_leaves_them_as_they_were(backbone):
    """With the language step shared (the cascade), the window runs on the lanes' own
    interpreters, resized for it and back: the bits of a separate pair, the lanes unchanged."""
    rng = np.random.default_rng(5)
    window = (rng.standard_normal((WHISPER_CONTEXT_FRAMES, 16)) * 0.3).astype(np.float32)
    segment = (rng.standard_normal((1, 100, 16)) * 0.3).astype(np.float32)
    shared = Backbone(backbone, (0, 1), "litert", 100, language=True, share_language=True)
    before = shared.encode([segment], np.array([100]))
    borrowed = shared.context_language(window)
    assert shared._shared_language is not None and len(shared._encoders) >= 1
    own = Backbone(backbone, (0, 1), "litert", 100).context_language(window)  # its own pair
    np.testing.assert_array_equal(borrowed, own)
    after = shared.encode([segment], np.array([100]))
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_windows_are_shared_out_among_the_lanes_with_the_bits_of_one_at_a_time(
        backbone, monkeypatch):
    """Several windows at once run on both lanes' encoders, the language step in turn:
    each window's logits are those it gets alone, and the lanes are left as they were."""
    from annotate.backbone import runtime
    from annotate.modelling import inference

    monkeypatch.setattr(inference, "LITERT_THREADS", 2)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    threads = set()
    window_step = runtime._window_step

    def watched(*args, **kwargs):
        step = window_step(*args, **kwargs)

        def run(window):
            threads.add(threading.get_ident())
            return step(window)

        return run

    monkeypatch.setattr(runtime, "_window_step", watched)
    rng = np.random.default_rng(6)
    windows = [(rng.standard_normal((WHISPER_CONTEXT_FRAMES, 16)) * 0.3).astype(np.float32)
               for _ in range(5)]
    segment = (rng.standard_normal((1, 100, 16)) * 0.3).astype(np.float32)
    shared = Backbone(backbone, (0, 1), "litert", 100, language=True, share_language=True)
    before = shared.encode([segment], np.array([100]))
    together = shared.context_languages(windows)
    assert together.shape == (5, 99) and len(shared._encoders) == 2
    assert len(threads) == 2  # both lanes took windows
    alone = np.stack([shared.context_language(w) for w in windows])
    np.testing.assert_array_equal(together, alone)
    own = Backbone(backbone, (0, 1), "litert", 100).context_languages(windows)  # its own pair
    np.testing.assert_array_equal(together, own)
    after = shared.encode([segment], np.array([100]))
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert shared.context_languages([]).shape == (0, 99)

    # Lanes with a language step each (--language-id whisper) lend both encoders and one
    # language step the same way.
    threads.clear()
    lanes = Backbone(backbone, (0, 1), "litert", 100, language=True)
    before = lanes.encode([segment], np.array([100]))
    np.testing.assert_array_equal(lanes.context_languages(windows), own)
    assert len(lanes._lane_languages) == 2 and lanes._shared_language is None
    assert len(threads) == 2
    after = lanes.encode([segment], np.array([100]))
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    with pytest.raises(ValueError, match="lengths"):
        shared.context_languages([windows[0], windows[1][:2000]])


def test_the_windows_of_many_recordings_go_in_bounded_calls_each_recording_as_alone(backbone):
    spec = models_with(backbone, "always", 1.0).language
    language = CascadeLanguage(tuple(LANGUAGES), tuple(LANGUAGES))
    rng = np.random.default_rng(8)
    recordings = []
    for _ in range(7):  # three stretches each: 21 windows
        labels = np.repeat([0, 1, 2], 2)
        probs = np.full((6, 4), 0.1)
        probs[np.arange(6), labels] = 0.7
        frames = np.full(6, 100)
        rows = [rng.standard_normal((100, 80)).astype(np.float32) for _ in range(6)]
        recordings.append(ContextInput(probs / probs.sum(1, keepdims=True), np.full(6, 1.0),
                                       frames, rows.__getitem__))
    calls = []

    def ask(windows):
        calls.append(len(windows))
        return np.stack([np.sin(np.arange(99) * float(w.mean())) * 3 for w in windows])

    step = language.context_step(spec, None)
    assert step == ContextStep(1.0, 0.8)
    together = language.with_context(recordings, ask, spec, step, 1.3)
    assert sum(calls) == 21 and max(calls) == CONTEXT_WINDOWS_A_CALL
    for recording, got in zip(recordings, together, strict=True):
        alone = language.with_context([recording], ask, spec, step, 1.3)[0]
        np.testing.assert_array_equal(got, alone)
        assert np.abs(got - recording.probs).max() > 1e-3


def test_the_fit_asks_where_the_context_pays_and_no_further():
    rng = np.random.default_rng(0)
    n, k = 60, 4
    truth_rec = rng.integers(0, k, n)
    unsure = np.arange(n) < 30
    probs, truth, owner = [], [], []
    for r in range(n):
        for _ in range(3):
            p = np.full(k, 0.05)
            if unsure[r]:  # unsure, and as often wrong as right
                p[(truth_rec[r] + r % 2) % k] = 0.55
                p[truth_rec[r] if r % 2 else (truth_rec[r] + 1) % k] += 0.3
            else:
                p[truth_rec[r]] = 0.97
            probs.append(p / p.sum())
            truth.append(truth_rec[r])
            owner.append(r)
    probs, truth, owner = np.array(probs), np.array(truth), np.array(owner)
    context = np.full((n, k), 0.1)
    context[np.arange(n), truth_rec] = 0.7  # the context is right, and fairly sure
    fit = fit_context(probs, context, truth, owner, np.ones(len(owner)), np.array(["a"] * n),
                      budget=1.0)
    rows = {row["threshold"]: row for row in fit.table}
    assert rows[0.0]["mean_accuracy"] < 0.8
    assert fit.weight > 0 and fit.table[-1]["mean_accuracy"] == 1.0
    # The cheapest threshold that asks every unsure recording (top 0.55) and none of the sure ones.
    assert rows[0.5]["mean_accuracy"] < 1.0
    assert fit.threshold == 0.6 and rows[0.6]["asked"] == rows[0.8]["asked"] == 0.5


def test_the_choice_stays_within_the_budget_of_asked_recordings():
    rows = [  # threshold, weight, share asked, mean accuracy
        (0.0, 0.0, 0.0, 0.970),
        (0.6, 2.0, 0.02, 0.975),
        (0.7, 2.0, 0.03, 0.980),
        (0.8, 2.5, 0.05, 0.986),
        (0.9, 2.5, 0.08, 0.987),
        (0.98, 2.5, 0.25, 0.989),
    ]
    table = [{"threshold": t, "weight": w, "asked": a, "mean_accuracy": m} for t, w, a, m in rows]
    # Unbounded, the lowest threshold within 0.002 of the best (0.989).
    assert choose_context(table, budget=1.0) == (0.9, 2.5)
    # Within 5 % of recordings asked, the best of those that fit (0.986 at 0.8).
    assert choose_context(table, budget=0.05) == (0.8, 2.5)
    assert choose_context(table, budget=0.04) == (0.7, 2.0)
    # Within the tolerance of the best affordable, the cheaper threshold.
    assert choose_context(table, tolerance=0.006, budget=0.05) == (0.7, 2.0)
    # Nothing affordable but asking no one.
    assert choose_context(table, budget=0.0) == (0.0, 0.0)


def test_the_context_settings_travel_in_model_json(backbone):
    models = models_with(backbone, "saved", 0.95, 1.3, window=1000)
    cascade = read_model_folder(models.language.folder).cascade
    assert (cascade.context_threshold, cascade.context_weight,
            cascade.context_window_frames) == (0.95, 1.3, 1000)
    assert CascadeLanguage(tuple(LANGUAGES), tuple(LANGUAGES)).context_step(
        models.language, None) == ContextStep(0.95, 1.3, 1000)
    spec_file = models.language.folder / "model.json"
    raw = json.loads(spec_file.read_text())
    # A cascade fitted before the window was a setting asks on Whisper's 30 s.
    older = json.loads(json.dumps(raw))
    del older["cascade"]["context_window_frames"]
    spec_file.write_text(json.dumps(older))
    assert read_model_folder(models.language.folder).cascade.context_window_frames == \
        WHISPER_CONTEXT_FRAMES
    for key, bad in (("context_threshold", 1.5), ("context_window_frames", 0),
                     ("context_window_frames", WHISPER_CONTEXT_FRAMES + 1),
                     ("context_window_frames", 10.5)):
        wrong = json.loads(json.dumps(raw))
        wrong["cascade"][key] = bad
        spec_file.write_text(json.dumps(wrong))
        with pytest.raises(ModelError, match="context_threshold"):
            read_model_folder(models.language.folder)


def with_whisper_context(backbone, root, threshold, weight=0.8, window=WHISPER_CONTEXT_FRAMES):
    """A copy of ``backbone`` whose Whisper asks its context under ``threshold``, with heads."""
    import shutil

    folder = root / backbone.folder.name
    shutil.copytree(backbone.folder, folder)
    raw = json.loads((folder / "backbone.json").read_text())
    raw["language"] |= {"context_threshold": threshold, "context_weight": weight,
                        "context_window_frames": window}
    (folder / "backbone.json").write_text(json.dumps(raw))
    shutil.copytree(backbone.folder.parent / "emotion-multi", root / "emotion-multi")
    create_head_folder(root / "language", "language", LANGUAGES, read_backbone_folder(folder),
                       layers=(2,), languages=LANGUAGES, switch_probability=0.05, seed=1)
    return ModelSet.load(language_model=root / "language",
                         emotion_models={"*": root / "emotion-multi"}).with_window(1.0)


def whisper_columns(models, recording) -> np.ndarray:
    plan = plan_run(models, window_s=1.0, language_id="whisper")
    rows = Annotator(plan, models).load().annotate([recording]).to_pandas()
    return rows.loc[rows["speech"], [f"lang_{c}" for c in LANGUAGES]].to_numpy()


def test_whispers_own_identification_asks_its_context_as_the_cascade_does(backbone, tmp_path):
    """``--language-id whisper`` takes its context settings from backbone.json: each unsure
    stretch (cut where its speech fills the window) is fused with Whisper's answer on its
    padded window, before the smoothing."""
    never = with_whisper_context(backbone, tmp_path / "never", 0.0)
    always = with_whisper_context(backbone, tmp_path / "always", 1.0, weight=0.8, window=250)
    spec = always.backbones["tiny-whisper"]
    assert (spec.language.context_threshold, spec.language.context_weight,
            spec.language.context_window_frames) == (1.0, 0.8, 250)
    params = never.language.features
    recording = a_recording(params)
    before = whisper_columns(never, recording)
    plain = dataclasses.replace(never.language, switch_probability=None)
    whisper = whisper_columns(dataclasses.replace(never, language=plain), recording)
    np.testing.assert_allclose(smooth_language(whisper, 0.05), before, atol=1e-9)

    speech = recording.bounds[recording.speech]
    frames = params.segment_frames(speech[:, 1] - speech[:, 0])
    rows = recording.features[params][0]
    runner = Backbone(spec, (0,), "litert", params.n_frames)
    tokens = [LANGUAGE_CODES.index(c) for c in LANGUAGES]
    want = whisper.copy()
    runs = language_stretches(smooth_language(whisper, 0.05).argmax(axis=1), frames, 250)
    assert max(len(run) for run in runs) <= 2  # 100-frame segments: cut at 250 frames
    for run in runs:
        logits = runner.context_language(whisper_context([rows[i][: frames[i]] for i in run],
                                                         250))
        context = softmax(logits[None, tokens].astype(float), spec.language.temperature)
        want[run] = fuse_language(whisper[run], np.repeat(context, len(run), 0), 1.0, 0.8)
    got = whisper_columns(always, recording)
    np.testing.assert_allclose(got, smooth_language(want, 0.05), atol=1e-6)
    assert np.abs(got - before).max() > 1e-3
    # A known language is not asked.
    assert WhisperLanguage(("de",), ("de",)).context_step(always.language, spec.language) is None


def test_whispers_context_settings_travel_in_backbone_json(backbone, tmp_path):
    models = with_whisper_context(backbone, tmp_path, 0.9, 1.5)
    folder = models.backbones["tiny-whisper"].folder
    spec = read_backbone_folder(folder)
    assert WhisperLanguage(tuple(LANGUAGES), tuple(LANGUAGES)).context_step(
        models.language, spec.language) == ContextStep(0.9, 1.5, WHISPER_CONTEXT_FRAMES)
    # The cascade keeps its own settings (none in this head's model.json).
    assert CascadeLanguage(tuple(LANGUAGES), tuple(LANGUAGES)).context_step(
        models.language, spec.language) is None
    # Without the settings, the entry is written as before.
    assert "context_threshold" not in backbone.language.to_json()
    raw = json.loads((folder / "backbone.json").read_text())
    for key, bad in (("context_threshold", 1.5), ("context_window_frames", 0),
                     ("context_window_frames", WHISPER_CONTEXT_FRAMES + 1)):
        wrong = json.loads(json.dumps(raw))
        wrong["language"][key] = bad
        (folder / "backbone.json").write_text(json.dumps(wrong))
        with pytest.raises(ModelError, match="context_threshold"):
            read_backbone_folder(folder)


def test_the_fit_scripts_ask_the_context_as_a_run_builds_its_window(backbone, tmp_path):
    """The validation windows of the context fits: each asked recording's speech joined and
    padded to the window, its answer at Whisper's temperature; the rest not asked."""
    import pandas as pd
    from conftest import write_audio

    from annotate.testing import speech_like
    from annotate.training.calibration import context_language_probs
    from annotate.training.training_data import load_recordings

    paths = [write_audio(tmp_path / f"{k}.wav", speech_like(s, seed=k), 16000)
             for k, s in enumerate((4.5, 2.2, 3.1))]
    params = backbone.features
    items = pd.DataFrame({"path": [str(p) for p in paths], "label": "en", "speaker": "s",
                          "corpus": "tests", "language": "en", "split": "train"})
    loaded, failures = load_recordings(items, params)
    assert not failures and all(len(loaded.speech_durations(k)) for k in range(3))
    runner = Backbone(backbone, (0,), "litert", params.n_frames)
    tokens = [LANGUAGE_CODES.index(c) for c in LANGUAGES]
    got = context_language_probs(runner, loaded, np.array([0, 2]), tokens, 1.3, 250)
    assert np.isnan(got[1]).all()
    for k in (0, 2):
        frames = params.segment_frames(loaded.speech_durations(k))
        rows = [row[:n] for row, n in zip(loaded.features[k], frames, strict=True)]
        window = whisper_context(rows, 250)
        want = softmax(runner.context_language(window)[None, tokens].astype(float), 1.3)
        np.testing.assert_allclose(got[k], want[0], atol=1e-6)
