"""The cascade: the language head, and Whisper's language step where the head is unsure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_metadata, sorted_table, speech_counts

import annotate
from annotate.backbone.runtime import Backbone
from annotate.backbone.whisper_language import LANGUAGE_CODES
from annotate.errors import ModelError, UsageError
from annotate.modelling.inference import Classifier
from annotate.modelling.language_fusion import fit_cascade, fit_weights
from annotate.modelling.model_folder import LanguageCascade, read_model_folder
from annotate.modelling.model_set import ModelSet
from annotate.modelling.posteriors import fuse_language, smooth_language, softmax
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import plan_run
from annotate.prepare.featurize import RecordingFeatures
from annotate.testing import create_backbone_folder, create_head_folder

LANGUAGES = ["de", "en", "fr", "it"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    spec = create_backbone_folder(root / "tiny-whisper", n_layers=3, litert_blocks=2,
                                  language=True)
    create_head_folder(root / "emotion-multi", "emotion", ["happiness", "neutral"], spec,
                       layers=(0, 1), seed=3)
    return spec


def language_head(backbone, name, threshold, head_weight=0.6, whisper_weight=0.9):
    """A language head (untrained, seed 1) beside the backbone, with the given cascade
    (threshold None: none)."""
    folder = backbone.folder.parent / name
    cascade = (None if threshold is None
               else LanguageCascade(threshold, head_weight, whisper_weight, "tests"))
    create_head_folder(folder, "language", LANGUAGES, backbone, layers=(2,),
                       languages=LANGUAGES, switch_probability=0.05, seed=1, cascade=cascade)
    return {"language_model": folder,
            "emotion_models": {"*": backbone.folder.parent / "emotion-multi"}}


@pytest.fixture(scope="module")
def corpus(two_recordings):
    return two_recordings


def recording_and_parts(models):
    """A 4-segment recording, and what the head and Whisper's step each make of it."""
    params = models.language.features
    rng = np.random.default_rng(4)
    stack = (rng.standard_normal((4, params.n_frames, params.n_mels)) * 0.3).astype(np.float32)
    bounds = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 3.5]])
    recording = RecordingFeatures("r.wav", bounds, np.ones(4, bool), {params: [stack]})
    frames = np.minimum(params.frames_of(np.rint((bounds[:, 1] - bounds[:, 0]) * 16000)
                                         .astype(int)), params.n_frames)
    spec = models.backbones["tiny-whisper"]
    pooled, logits = Backbone(spec, models.backbone_layers("tiny-whisper"), "litert",
                              params.n_frames, language=True).encode([stack], frames)
    order = models.backbone_layers("tiny-whisper")
    head_in = pooled[:, [order.index(2)]].reshape(len(pooled), -1)
    head = softmax(Classifier(models.language, "litert").load().logits(head_in).astype(float),
                   models.language.temperature)
    tokens = [LANGUAGE_CODES.index(c) for c in LANGUAGES]
    whisper = softmax(logits[:, tokens].astype(float), spec.language.temperature)
    return recording, head, whisper


def test_unsure_segments_get_the_fusion_and_sure_ones_the_head(backbone, tmp_path):
    probe = ModelSet.load(**language_head(backbone, "probe", None)).with_window(1.0)
    _, head, _ = recording_and_parts(probe)
    top = head.max(axis=1)
    # A threshold between the segments' top probabilities: some are asked, some not.
    threshold = float(np.sort(top)[1] + np.sort(top)[2]) / 2
    models = ModelSet.load(**language_head(backbone, "lang", threshold)
                           ).with_window(1.0)
    recording, head, whisper = recording_and_parts(models)
    asked = head.max(axis=1) < threshold
    assert 0 < asked.sum() < len(asked)
    want = head.copy()
    want[asked] = fuse_language(head[asked], whisper[asked], 0.6, 0.9)
    want = smooth_language(want, 0.05)
    rows = Annotator(plan_run(models, window_s=1.0, language_id="cascade"), models).load().annotate([recording]).to_pandas()
    got = rows[[f"lang_{c}" for c in LANGUAGES]].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    head_only = Annotator(plan_run(models, window_s=1.0, language_id="head"), models).load().annotate([recording]).to_pandas()
    assert np.abs(got - head_only[[f"lang_{c}" for c in LANGUAGES]].to_numpy()).max() > 1e-3


def test_the_language_step_runs_only_for_segments_that_ask(backbone):
    rng = np.random.default_rng(0)
    params = backbone.features
    stack = (rng.standard_normal((5, params.n_frames, params.n_mels)) * 0.3).astype(np.float32)
    frames = np.full(5, params.n_frames)
    runner = Backbone(backbone, (0, 1, 2), "litert", params.n_frames, language=True)
    pooled, every = runner.encode([stack], frames)
    seen = []

    def odd_rows(block, first):
        seen.append(block.copy())
        index = int(np.flatnonzero((pooled == block[0]).all(axis=(1, 2)))[0])
        assert first == index  # the block's place among all segments
        return np.array([index % 2 == 1])

    again, some = runner.encode([stack], frames, odd_rows)
    np.testing.assert_array_equal(again, pooled)
    assert len(seen) == 5
    np.testing.assert_array_equal(some[1::2], every[1::2])
    assert np.isnan(some[0::2]).all()
    _, none = runner.encode([stack], frames, lambda block, first: np.zeros(len(block), bool))
    assert np.isnan(none).all()


def test_lanes_sharing_one_language_step_give_the_same_bits(backbone, monkeypatch):
    import annotate.backbone.runtime as runtime
    import annotate.modelling.inference as inference

    monkeypatch.setattr(inference, "LITERT_THREADS", 2)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    rng = np.random.default_rng(1)
    params = backbone.features
    stack = (rng.standard_normal((9, params.n_frames, params.n_mels)) * 0.3).astype(np.float32)
    frames = rng.integers(20, params.n_frames + 1, 9)
    some = lambda block, first: block[:, 0, 0] > np.median(block[:, 0, 0]) - 1.0  # noqa: E731
    out = {}
    for shared in (False, True):
        runner = Backbone(backbone, (0, 1, 2), "litert", params.n_frames, language=True,
                          share_language=shared).load()
        assert len(runner._lanes) == 2
        out[shared] = runner.encode([stack], frames, some)
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_array_equal(out[True][1], out[False][1])
    assert (~np.isnan(out[True][1][:, 0])).sum() > 0


def test_auto_takes_the_cascade_where_the_head_records_one(backbone, corpus, tmp_path):
    with_cascade = language_head(backbone, "with", 0.9)
    out = tmp_path / "auto.parquet"
    annotate.run([corpus], out, jobs=1, **with_cascade)
    assert run_metadata(out)["settings"]["language_id"] == "cascade"
    annotate.run([corpus], out, jobs=1, overwrite=True, languages=["de"], **with_cascade)
    # A known language needs no identification.
    assert run_metadata(out)["settings"]["language_id"] == "head"
    without = language_head(backbone, "without", None)
    annotate.run([corpus], out, jobs=1, overwrite=True, **without)
    assert run_metadata(out)["settings"]["language_id"] == "head"
    with pytest.raises(UsageError, match="records no cascade"):
        annotate.run([corpus], out, language_id="cascade", overwrite=True, **without)
    with pytest.raises(UsageError, match="uses the language head"):
        annotate.run([corpus], out, language_id="cascade", languages=["ja"], overwrite=True,
                     **with_cascade)


def test_threshold_zero_is_the_head_and_tables_do_not_depend_on_batching(backbone, corpus,
                                                                          tmp_path):
    columns = [f"lang_{c}" for c in LANGUAGES]
    head = tmp_path / "head.parquet"
    annotate.run([corpus], head, jobs=1, language_id="head",
                 **language_head(backbone, "zero", 0.0))
    zero = tmp_path / "zero.parquet"
    annotate.run([corpus], zero, jobs=1, language_id="cascade",
                 **language_head(backbone, "zero", 0.0))
    pd.testing.assert_frame_equal(sorted_table(head)[columns], sorted_table(zero)[columns])
    runs = {}
    everything = language_head(backbone, "one", 1.0)
    for name, kwargs in {"a": {"batch_size": 1, "jobs": 1}, "b": {"batch_size": 256, "jobs": 2},
                         "keras": {"backend": "keras"}}.items():
        out = tmp_path / f"{name}.parquet"
        annotate.run([corpus], out, **everything, **kwargs)
        runs[name] = sorted_table(out)
    pd.testing.assert_frame_equal(runs["a"], runs["b"])
    np.testing.assert_allclose(runs["keras"][columns].to_numpy(dtype=float),
                               runs["a"][columns].to_numpy(dtype=float), atol=1e-4)
    assert np.abs(runs["a"][columns].to_numpy(dtype=float)
                  - sorted_table(head)[columns].to_numpy(dtype=float)).max() > 1e-3


def test_fusion_is_a_weighted_product_over_the_candidates():
    head = np.array([[0.6, 0.4, 0.0], [0.5, 0.5, 0.0]])
    whisper = np.array([[0.2, 0.8, 0.0], [0.9, 0.1, 0.0]])
    fused = fuse_language(head, whisper, 1.0, 1.0)
    np.testing.assert_allclose(fused[0], [0.12 / 0.44, 0.32 / 0.44, 0.0])
    np.testing.assert_allclose(fuse_language(head, whisper, 1.0, 0.0), head)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)


def test_fit_weights_and_threshold_on_validation_segments():
    """Whisper right where the head is unsure: the fit asks it there, and only there."""
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.integers(0, 4, n)
    sure = rng.random(n) < 0.7
    head = np.full((n, 4), 0.1)
    head[np.arange(n), truth] = 0.7  # sure and right
    wrong = (truth + 1) % 4
    head[~sure] = 0.2
    head[~sure, wrong[~sure]] = 0.4  # unsure and wrong
    whisper = np.full((n, 4), 0.05)
    whisper[np.arange(n), truth] = 0.85
    whisper[sure, wrong[sure]] = 0.85  # Whisper wrong where the head is sure ...
    whisper[sure, truth[sure]] = 0.05
    whisper /= whisper.sum(axis=1, keepdims=True)
    owner = np.arange(n)
    group = np.where(np.arange(n) % 2 == 0, "a", "b")
    fit = fit_cascade(head, whisper, truth, owner, np.ones(n), group, budget=1.0)
    assert fit.whisper_weight > 0  # (the head says the same on every unsure segment)
    assert 0.4 < fit.threshold <= 0.7  # ... so only the unsure segments go to it
    chosen = next(row for row in fit.table if row["threshold"] == fit.threshold)
    assert chosen["mean_accuracy"] == 1.0
    assert abs(chosen["asked"] - (~sure).mean()) < 1e-9
    assert fit_weights(head, head, truth)[0] > 0


def test_the_cascade_asks_no_more_segments_than_its_budget():
    """Whisper helps on every unsure segment, but 30 % of them cost more than the 20 % allowed."""
    rng = np.random.default_rng(1)
    n = 400
    truth = rng.integers(0, 4, n)
    unsure = np.arange(n) < 120  # 30 %, their top probability 0.3-0.6: the lower half first
    head = np.full((n, 4), 0.02)
    head[np.arange(n), truth] = 0.94
    level = np.linspace(0.3, 0.6, 120)
    head[:120] = ((1 - level) / 3)[:, None]
    head[np.arange(120), (truth[:120] + 1) % 4] = level  # unsure and wrong
    whisper = np.full((n, 4), 0.05)
    whisper[np.arange(n), truth] = 0.85
    owner, group = np.arange(n), np.where(np.arange(n) % 2 == 0, "a", "b")
    free = fit_cascade(head, whisper, truth, owner, np.ones(n), group, budget=1.0)
    assert next(r for r in free.table if r["threshold"] == free.threshold)["asked"] >= 0.3
    bounded = fit_cascade(head, whisper, truth, owner, np.ones(n), group)
    chosen = next(r for r in bounded.table if r["threshold"] == bounded.threshold)
    assert 0 < chosen["asked"] <= 0.2 and bounded.whisper_weight > 0
    assert bounded.table == free.table  # the same validation table, another choice
    assert unsure.mean() == pytest.approx(0.3)


def test_a_bad_cascade_entry_is_refused(backbone):
    folder = backbone.folder.parent / "refused"
    language_head(backbone, "refused", 0.5)
    path = folder / "model.json"
    raw = json.loads(path.read_text())
    assert read_model_folder(folder).cascade == LanguageCascade(0.5, 0.6, 0.9, "tests")
    raw["cascade"]["threshold"] = 1.5
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="cascade threshold"):
        read_model_folder(folder)
    raw["cascade"] = {"threshold": 0.5}
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="cascade must be"):
        read_model_folder(folder)


def test_the_app_labels_a_clip_as_a_default_run_does(backbone, corpus, tmp_path):
    """The app takes the language from where annotate run would (here, the cascade),
    and feeds the backbone the window it is given, as the run does."""
    from annotate.views.app_logic import ClipAnnotator

    everything = language_head(backbone, "app", 1.0)
    clip = ClipAnnotator(ModelSet.load(**everything))
    assert clip.annotator(1.0).plan.language.name == "cascade"
    for window in (1.0, 2.0):
        out = tmp_path / f"run{window}.parquet"
        annotate.run([corpus], out, jobs=1, window_s=window, **everything)
        assert run_metadata(out)["settings"]["language_id"] == "cascade"
        expected = sorted_table(out)
        expected = expected[expected["path"] == "long.wav"].reset_index(drop=True)
        rows = clip.annotate_file(corpus / "long.wav", "long.wav", window_s=window)
        pd.testing.assert_frame_equal(rows.reset_index(drop=True), expected)


def toy_language_corpus(root):
    """Two speakers each of two 'languages' that differ by voice pitch."""
    import soundfile as sf

    from annotate.testing import voice
    from annotate.training.corpora.base import Corpus

    rows = []
    for language, pitch in (("de", 120.0), ("en", 240.0)):
        for speaker in range(2):
            for k in range(3):
                path = root / f"{language}{speaker}_{k}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, voice(1.2 + 0.3 * k, pitch * (1 + 0.05 * speaker),
                                     seed=len(rows)), 16000)
                rows.append({"path": str(path), "label": language, "task": "language",
                             "speaker": f"{language}{speaker}", "gender": None,
                             "language": language, "split": None})
    return Corpus("toy", root, pd.DataFrame(rows))


def test_annotate_train_fits_a_language_heads_cascade(backbone, tmp_path):
    from annotate.training.heads import train_on_corpora

    corpus = toy_language_corpus(tmp_path / "toy")
    said: list[str] = []
    spec = train_on_corpora("language", [corpus], tmp_path / "lang", backbone=backbone.folder,
                            trials=0, n_folds=2, copies=0, cache_dir=tmp_path / "cache",
                            jobs=1, report=said.append)
    step = [line for line in said if line.startswith("cascade: Whisper's language step on")]
    # 3 s windows: one segment a recording, where the detector hears speech
    window = dataclasses.replace(backbone.features, segment_s=3.0)
    _, segments = speech_counts(corpus.items["path"], window)
    assert segments >= 8  # of 12 (a synthetic voice: most of it is speech)
    assert step == [f"cascade: Whisper's language step on {segments} segments"]
    (chosen,) = [line for line in said if line.startswith("cascade: threshold")]
    threshold = float(chosen.split()[2].rstrip(","))
    # No cascade when asking Whisper gains nothing on validation; else the chosen one.
    assert (spec.cascade is None) == (threshold == 0.0)
    if spec.cascade is not None:
        assert spec.cascade.threshold == threshold
        assert read_model_folder(spec.folder).cascade == spec.cascade
    said.clear()
    train_on_corpora("language", [corpus], tmp_path / "plain", backbone=backbone.folder,
                     trials=0, n_folds=2, copies=0, cache_dir=tmp_path / "cache", jobs=1,
                     cascade=False, report=said.append)
    assert not any(line.startswith("cascade") for line in said)
    assert read_model_folder(tmp_path / "plain").cascade is None
