"""End-to-end behaviour of ``annotate.run``: rows, schema, routing, manifests, failures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import EMODB_LABELS, FALLBACK_LABELS, LANGUAGES, write_audio
from joblib import delayed as joblib_delayed

import annotate
from annotate.errors import UsageError
from annotate.labels import EMOTIONS
from annotate.schema import segments_schema
from annotate.testing import speech_like

LANG_COLS = [f"lang_{c}" for c in LANGUAGES]
EMO_COLS = [f"emo_{e}" for e in EMOTIONS]


@pytest.fixture
def annotated(mixed_corpus, tmp_path, model_args):
    out = tmp_path / "out.parquet"
    result = annotate.run([mixed_corpus], out, jobs=1, **model_args)
    return result, pd.read_parquet(out)


def test_written_file_follows_the_schema(annotated):
    result, _ = annotated
    table = pq.read_table(result.output)
    assert table.schema.remove_metadata().equals(segments_schema(tuple(LANGUAGES)))
    meta = json.loads(table.schema.metadata[b"annotate"])
    assert meta["version"] == annotate.__version__
    assert {m["task"] for m in meta["models"]} == {"language", "emotion"}
    assert all(m["hash"].startswith("sha256:") for m in meta["models"])
    assert meta["settings"]["window_s"] == 3.0


def test_one_row_per_segment_with_a_unique_key(annotated):
    _, frame = annotated
    assert not frame.duplicated(["path", "start_s", "end_s"]).any()
    assert set(frame["path"]) == {
        "speech_16k.wav", "nested/deeper/speech_8k.WAV", "nested/stereo_44k.flac",
        "speech_48k.mp3", "speech.ogg", "short.wav", "silence.wav", "tone.wav",
    }
    segments = frame[frame["path"] == "speech_16k.wav"][["start_s", "end_s"]].to_numpy()
    np.testing.assert_allclose(segments, [[0, 3], [3, 6], [6, 7.5]])
    short = frame[frame["path"] == "short.wav"][["start_s", "end_s"]].to_numpy()
    np.testing.assert_allclose(short, [[0, 1.2]])


def test_probabilities_sum_to_one_on_speech_and_are_null_elsewhere(annotated):
    _, frame = annotated
    speech = frame[frame["speech"]]
    assert len(speech) >= 8
    np.testing.assert_allclose(speech[LANG_COLS].sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(speech[EMO_COLS].sum(axis=1, skipna=True), 1.0, atol=1e-9)
    assert (speech["lang"] == speech[LANG_COLS].idxmax(axis=1).str[5:]).all()
    np.testing.assert_allclose(speech["lang_p"], speech[LANG_COLS].max(axis=1))
    silent = frame[~frame["speech"]]
    assert set(silent["path"]) >= {"silence.wav", "tone.wav"}
    assert silent[["lang", "lang_p", "emotion", "emotion_model", *LANG_COLS, *EMO_COLS]].isna().all().all()


def test_emotion_columns_are_null_where_the_model_lacks_the_label(annotated):
    _, frame = annotated
    speech = frame[frame["speech"]]
    for model_name, labels in (("emotion-de", EMODB_LABELS), ("emotion-multi", FALLBACK_LABELS)):
        rows = speech[speech["emotion_model"] == model_name]
        if rows.empty:
            continue
        for label in EMOTIONS:
            assert rows[f"emo_{label}"].notna().all() == (label in labels)
        assert set(rows["emotion"]) <= set(labels)


def test_emotion_model_follows_the_recordings_language(mixed_corpus, tmp_path, model_args):
    frames = {}
    for lang in ("de", "fr"):
        out = tmp_path / f"{lang}.parquet"
        annotate.run([mixed_corpus], out, languages=[lang], jobs=1, **model_args)
        frames[lang] = pd.read_parquet(out)
    de, fr = frames["de"], frames["fr"]
    assert set(de.loc[de["speech"], "emotion_model"]) == {"emotion-de"}
    assert set(fr.loc[fr["speech"], "emotion_model"]) == {"emotion-multi"}
    # One known language: all probability on it, the others excluded (null).
    assert (de.loc[de["speech"], "lang_de"] == 1.0).all()
    assert de.loc[de["speech"], ["lang_en", "lang_fr", "lang_it"]].isna().all().all()


def test_candidate_languages_renormalise(mixed_corpus, tmp_path, model_args):
    out = tmp_path / "out.parquet"
    annotate.run([mixed_corpus], out, languages=["de", "fr"], jobs=1, **model_args)
    speech = pd.read_parquet(out).query("speech")
    np.testing.assert_allclose(speech["lang_de"] + speech["lang_fr"], 1.0)
    assert speech[["lang_en", "lang_it"]].isna().all().all()
    assert set(speech["lang"]) <= {"de", "fr"}


def test_unknown_language_is_a_usage_error(mixed_corpus, tmp_path, model_args):
    with pytest.raises(UsageError, match=r"bad language 'xx', expected one of \[de, en, fr, it\]"):
        annotate.run([mixed_corpus], tmp_path / "o.parquet", languages=["xx"], **model_args)


def test_window_and_hop(tmp_path, model_args):
    write_audio(tmp_path / "c" / "a.wav", speech_like(5.0), 16000)
    out = tmp_path / "o.parquet"
    annotate.run([tmp_path / "c"], out, window_s=2.0, hop_s=1.5, jobs=1, **model_args)
    bounds = pd.read_parquet(out)[["start_s", "end_s"]].to_numpy()
    np.testing.assert_allclose(bounds, [[0, 2], [1.5, 3.5], [3.0, 5.0]])


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_table_does_not_depend_on_jobs_workers_or_batch_size(mixed_corpus, tmp_path, model_args,
                                                             workers):
    (mixed_corpus / "broken.wav").write_bytes(b"RIFF junk")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    annotate.run([mixed_corpus], a, jobs=1, batch_size=1, **model_args)
    annotate.run([mixed_corpus], b, jobs=2, workers=workers, batch_size=1000, **model_args)
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    failures = [pq.read_table(path.with_name(path.stem + ".failures.parquet")) for path in (a, b)]
    assert failures[0].equals(failures[1]) and failures[0].num_rows == 1


def test_auto_workers_are_threads_on_few_cores_and_processes_beyond():
    from annotate.pipeline.workers import THREADS_UP_TO, resolve_workers

    assert resolve_workers("auto", THREADS_UP_TO) == "threads"
    assert resolve_workers("auto", THREADS_UP_TO + 1) == "processes"
    assert resolve_workers("processes", 1) == "processes"
    with pytest.raises(UsageError, match=r"bad workers 'fibers', expected one of \[auto, "):
        resolve_workers("fibers", 2)


def test_feature_threads_hold_numpys_blas_to_one_thread_and_give_it_back():
    from threadpoolctl import threadpool_info

    from annotate.pipeline.workers import parallel_features

    def blas_threads():
        return {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()
                if pool["user_api"] == "blas"}

    before = blas_threads()
    parallel, limits = parallel_features(2, "threads")
    with limits:
        inside = parallel(joblib_delayed(blas_threads)() for _ in range(2))
    assert inside == [{path: 1 for path in before}] * 2
    assert blas_threads() == before


def test_a_broken_file_becomes_a_failure_row_and_the_batch_goes_on(mixed_corpus, tmp_path,
                                                                    model_args):
    (mixed_corpus / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)
    (mixed_corpus / "empty.flac").write_bytes(b"")
    out = tmp_path / "out.parquet"
    result = annotate.run([mixed_corpus], out, jobs=2, **model_args)
    failures = pd.read_parquet(tmp_path / "out.failures.parquet")
    assert list(failures.columns) == ["path", "error", "message"]
    assert dict(zip(failures["path"], failures["error"])) == {"broken.wav": "decode",
                                                               "empty.flac": "empty"}
    assert result.failed == 2 and result.annotated == 8
    assert "broken.wav" not in set(pd.read_parquet(out)["path"])


def test_failures_table_is_written_even_when_empty(tmp_path, model_args):
    write_audio(tmp_path / "c" / "a.wav", speech_like(2.0), 16000)
    annotate.run([tmp_path / "c"], tmp_path / "o.parquet", jobs=1, **model_args)
    failures = pd.read_parquet(tmp_path / "o.failures.parquet")
    assert len(failures) == 0 and list(failures.columns) == ["path", "error", "message"]


def test_long_recording_is_split_into_chunks_with_the_same_rows(tmp_path, model_args,
                                                                monkeypatch):
    write_audio(tmp_path / "c" / "long.flac", speech_like(40.0), 16000)
    whole, chunked = tmp_path / "whole.parquet", tmp_path / "chunked.parquet"
    annotate.run([tmp_path / "c"], whole, jobs=1, **model_args)
    monkeypatch.setattr("annotate.pipeline.run.CHUNK_S", 9.0)  # 3 segments per task
    annotate.run([tmp_path / "c"], chunked, jobs=2, **model_args)
    a, b = pd.read_parquet(whole), pd.read_parquet(chunked)
    pd.testing.assert_frame_equal(a[["path", "start_s", "end_s", "speech"]],
                                  b[["path", "start_s", "end_s", "speech"]])
    np.testing.assert_allclose(a[LANG_COLS].to_numpy(), b[LANG_COLS].to_numpy(), atol=1e-3)


def test_long_recording_features_wait_on_disk_and_give_the_same_table(tmp_path, model_args,
                                                                       monkeypatch):
    from annotate.pipeline import spill

    write_audio(tmp_path / "c" / "long.flac", speech_like(40.0), 16000)
    write_audio(tmp_path / "c" / "short.flac", speech_like(5.0, seed=3), 16000)
    monkeypatch.setattr("annotate.pipeline.run.CHUNK_S", 9.0)  # 3 segments per task
    in_memory, spilled = tmp_path / "memory.parquet", tmp_path / "spilled.parquet"
    annotate.run([tmp_path / "c"], in_memory, jobs=2, **model_args)
    saved, loaded = [], []
    real_keep, real_array = spill.SpillFolder.keep, spill.SpilledFeatures.__array__
    monkeypatch.setattr(spill.SpillFolder, "keep", lambda self, f, held: (
        saved.append(self) or real_keep(self, f, held)))
    monkeypatch.setattr(spill.SpilledFeatures, "__array__", lambda self, *a, **k: (
        loaded.append(self.path) or real_array(self, *a, **k)))
    monkeypatch.setattr("annotate.pipeline.local.SPILL_BUDGET_BYTES", 0)  # everything waits on disk
    annotate.run([tmp_path / "c"], spilled, jobs=2, **model_args)
    assert saved[0].spilled_bytes > 0 and loaded  # features did go through files
    pd.testing.assert_frame_equal(pd.read_parquet(in_memory), pd.read_parquet(spilled))
    assert not spilled.with_name(spilled.name + ".partial").exists()  # files cleaned up


def test_output_readable_by_pyarrow_dataset_and_pandas_without_help(annotated):
    result, frame = annotated
    assert frame["start_s"].dtype == np.float64 and frame["speech"].dtype == bool
    import pyarrow.dataset as ds

    assert ds.dataset(result.output).to_table().num_rows == len(frame)


def test_resampled_audio_matches_native_rate(tmp_path, model_args):
    """The same speech at 16 kHz and 48 kHz gets (nearly) the same probabilities."""
    signal = speech_like(3.0, 48000, seed=9)
    write_audio(tmp_path / "c" / "hi.wav", signal, 48000, subtype="FLOAT")
    import soxr

    write_audio(tmp_path / "c" / "lo.wav", soxr.resample(signal, 48000, 16000), 16000,
                subtype="FLOAT")
    out = tmp_path / "o.parquet"
    annotate.run([tmp_path / "c"], out, jobs=1, **model_args)
    frame = pd.read_parquet(out).set_index("path")
    np.testing.assert_allclose(frame.loc["hi.wav", LANG_COLS].astype(float),
                               frame.loc["lo.wav", LANG_COLS].astype(float), atol=0.02)
    info = sf.info(tmp_path / "c" / "hi.wav")
    assert info.samplerate == 48000


def test_a_local_run_writes_to_an_object_store_as_to_a_path(tmp_path, model_args):
    """The one store takes an fsspec URL from either executor; worker processes keep their
    lookahead file and spilled features in a local scratch folder, removed after the run."""
    import fsspec

    for i in range(3):
        write_audio(tmp_path / "c" / f"r{i}.wav", speech_like(2.0 + i, seed=i), 16000)
    (tmp_path / "c" / "broken.wav").write_bytes(b"RIFF junk")
    local = tmp_path / "local.parquet"
    annotate.run([tmp_path / "c"], local, jobs=1, **model_args)
    store = fsspec.filesystem("memory")
    try:
        result = annotate.run([tmp_path / "c"], "memory://bucket/local/out.parquet", jobs=2,
                              workers="processes", **model_args)
        assert result.output == "memory://bucket/local/out.parquet"
        assert result.failures_output == "memory://bucket/local/out.failures.parquet"
        assert (result.annotated, result.failed) == (3, 1)
        with store.open("/bucket/local/out.parquet", "rb") as handle:
            table = pq.read_table(handle)
        assert table.equals(pq.read_table(local), check_metadata=True)
        with store.open("/bucket/local/out.failures.parquet", "rb") as handle:
            assert pq.read_table(handle).equals(pq.read_table(
                tmp_path / "local.failures.parquet"))
        assert not store.exists("/bucket/local/out.parquet.partial")
        again = annotate.run([tmp_path / "c"], "memory://bucket/local/out.parquet", jobs=1,
                             **model_args)
        assert again.already_complete
    finally:
        store.rm("/bucket", recursive=True)


def test_an_output_url_without_its_file_system_is_a_usage_error(mixed_corpus, model_args):
    with pytest.raises(UsageError, match="cannot write to nosuch://b/out.parquet"):
        annotate.run([mixed_corpus], "nosuch://b/out.parquet", jobs=1, **model_args)
