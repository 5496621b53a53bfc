"""Whisper's language identification in annotate run: any of its 99 codes (tiny random backbone)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import run_metadata, sorted_table

import annotate
from annotate.backbone.runtime import Backbone
from annotate.backbone.whisper_language import LANGUAGE_CODES
from annotate.errors import ModelError, UsageError
from annotate.modelling.backbone_folder import read_backbone_folder
from annotate.modelling.model_set import ModelSet
from annotate.modelling.posteriors import smooth_language, softmax
from annotate.pipeline.annotator import Annotator
from annotate.pipeline.plan import plan_run
from annotate.prepare.featurize import RecordingFeatures
from annotate.testing import create_backbone_folder, create_head_folder

LANGUAGES = ["de", "en", "fr", "it"]


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A tiny backbone with Whisper's language path (2 of 3 blocks in model.tflite), and heads."""
    root = tmp_path_factory.mktemp("whisper-heads")
    backbone = create_backbone_folder(root / "tiny-whisper", n_layers=3, litert_blocks=2,
                                      language=True)
    create_head_folder(root / "language", "language", LANGUAGES, backbone, layers=(2,),
                       languages=LANGUAGES, switch_probability=0.05, seed=1)
    create_head_folder(root / "emotion-multi", "emotion", ["happiness", "neutral"],
                       backbone, layers=(0, 1), seed=3)
    return root


def head_args(root):
    return {"language_model": root / "language", "emotion_models": {"*": root / "emotion-multi"}}


@pytest.fixture(scope="module")
def corpus(two_recordings):
    return two_recordings


def test_candidates_beyond_the_head_get_whispers_scores_renormalised(corpus, heads, tmp_path):
    out = tmp_path / "out.parquet"
    result = annotate.run([corpus], out, languages=["en", "ja", "es"], **head_args(heads), jobs=1)
    assert result.failed == 0 and result.annotated == 2
    rows = sorted_table(out)
    speech = rows[rows["speech"]]
    assert [c for c in rows.columns if c.startswith("lang_") and c != "lang_p"] == \
        ["lang_en", "lang_ja", "lang_es"]
    np.testing.assert_allclose(speech[["lang_en", "lang_ja", "lang_es"]].sum(axis=1), 1.0)
    assert set(speech["lang"]) <= {"en", "ja", "es"}
    assert speech["emotion_model"].eq("emotion-multi").all()
    meta = run_metadata(out)
    assert meta["settings"]["language_id"] == "whisper"
    (backbone,) = meta["backbones"]
    assert backbone["language"]["file"] == "language.tflite"


def test_the_head_stays_the_default_for_its_own_languages(corpus, heads, tmp_path):
    out = tmp_path / "out.parquet"
    annotate.run([corpus], out, languages=["de", "fr"], **head_args(heads), jobs=1)
    meta = run_metadata(out)
    assert meta["settings"]["language_id"] == "head"
    assert "language" not in meta["backbones"][0]
    assert {f"lang_{c}" for c in LANGUAGES} <= set(sorted_table(out).columns)


def test_whisper_scores_are_the_candidates_logits_over_the_fitted_temperature(heads):
    """The annotator's probabilities: Whisper's logits of the candidates only, / T, smoothed."""
    models = ModelSet.load(**{k: v for k, v in head_args(heads).items()}).with_window(1.0)
    spec = models.backbones["tiny-whisper"]
    params = models.language.features
    rng = np.random.default_rng(4)
    stack = (rng.standard_normal((4, params.n_frames, params.n_mels)) * 0.3).astype(np.float32)
    bounds = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 3.5]])
    recording = RecordingFeatures("r.wav", bounds, np.ones(4, bool), {params: [stack]})
    candidates = ("it", "ja", "zh")
    plan = plan_run(models, languages=candidates, language_id="whisper", window_s=1.0)
    annotator = Annotator(plan, models).load()
    rows = annotator.annotate([recording]).to_pandas()

    frames = np.minimum(params.frames_of(np.rint((bounds[:, 1] - bounds[:, 0]) * 16000)
                                         .astype(int)), params.n_frames)
    _, logits = Backbone(spec, (0,), "litert", params.n_frames, language=True).encode(
        [stack], frames)
    tokens = [LANGUAGE_CODES.index(c) for c in candidates]
    want = smooth_language(softmax(logits[:, tokens], spec.language.temperature), 0.05)
    got = rows[[f"lang_{c}" for c in candidates]].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Not the head's, nor Whisper's over all 99 languages.
    over_all = softmax(logits)[:, tokens]
    assert np.abs(got - over_all).max() > 1e-3


def test_whisper_language_tables_do_not_depend_on_batching_or_backend(corpus, heads, tmp_path):
    runs = {}
    for name, kwargs in {"a": {"batch_size": 1}, "b": {"batch_size": 256, "jobs": 2},
                         "keras": {"backend": "keras"}}.items():
        out = tmp_path / f"{name}.parquet"
        annotate.run([corpus], out, languages=["en", "ja"], **head_args(heads), **kwargs)
        runs[name] = sorted_table(out)
    columns = ["lang_en", "lang_ja"]
    pd.testing.assert_frame_equal(runs["a"], runs["b"])
    np.testing.assert_allclose(runs["keras"][columns].to_numpy(dtype=float),
                               runs["a"][columns].to_numpy(dtype=float), atol=1e-4)


def test_language_id_whisper_covers_the_default_candidates(corpus, heads, tmp_path):
    out = tmp_path / "out.parquet"
    annotate.run([corpus], out, language_id="whisper", **head_args(heads), jobs=1)
    rows = sorted_table(out)
    assert run_metadata(out)["settings"]["language_id"] == "whisper"
    speech = rows[rows["speech"]]
    np.testing.assert_allclose(speech[[f"lang_{c}" for c in LANGUAGES]].sum(axis=1), 1.0)


def test_unknown_codes_and_choices_are_usage_errors(corpus, heads, tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(UsageError, match="nor Whisper"):
        annotate.run([corpus], out, languages=["en", "xx"], **head_args(heads))
    with pytest.raises(UsageError, match=r"bad language 'ja', expected one of \[de, en, fr, it\]"):
        annotate.run([corpus], out, languages=["ja"], language_id="head", **head_args(heads))
    with pytest.raises(UsageError, match="language identification 'bogus'"):
        annotate.run([corpus], out, language_id="bogus", **head_args(heads))
    assert not out.exists()


def test_a_backbone_without_the_language_export_says_so(corpus, tmp_path):
    backbone = create_backbone_folder(tmp_path / "plain")
    create_head_folder(tmp_path / "language", "language", LANGUAGES, backbone, layers=(2,),
                       languages=LANGUAGES)
    with pytest.raises(UsageError, match="language.tflite"):
        annotate.run([corpus], tmp_path / "out.parquet", languages=["ja", "en"],
                     language_model=tmp_path / "language")


def test_a_stale_language_export_is_not_run_on_litert(heads, tmp_path):
    import shutil

    from annotate.modelling.inference import choose_backbone_backend

    folder = tmp_path / "stale"
    shutil.copytree(heads / "tiny-whisper", folder)
    spec = read_backbone_folder(folder)
    assert spec.language_problem() is None
    with open(spec.weights_path, "ab") as handle:
        handle.write(b"changed")
    stale = read_backbone_folder(folder)
    assert "language.tflite was converted from other weights" in stale.language_problem()
    assert choose_backbone_backend(stale, (0,), "auto", language=True) == "keras"
    with pytest.raises(ModelError, match="converted from other weights"):
        Backbone(stale, (0,), "litert", 100, language=True).load()


def test_the_command_line_takes_language_id_and_whisper_codes(corpus, heads, tmp_path):
    from typer.testing import CliRunner

    from annotate.cli import app

    out = tmp_path / "cli.parquet"
    args = ["run", str(corpus), "-o", str(out), "-q", "-j", "1",
            "--language-model", str(heads / "language"),
            "--emotion-model", f"*={heads / 'emotion-multi'}"]
    done = CliRunner().invoke(app, [*args, "--languages", "en,zh"])
    assert done.exit_code == 0, done.output
    assert {"lang_en", "lang_zh"} <= set(sorted_table(out).columns)
    refused = CliRunner().invoke(app, [*args, "--languages", "zh", "--language-id", "head",
                                       "--overwrite"])
    assert refused.exit_code == 2 and "bad language 'zh'" in refused.output
