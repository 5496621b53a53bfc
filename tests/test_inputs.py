"""Discovery: directory walks and manifests of every kind."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import write_audio

import annotate
from annotate.audio.discover import discover
from annotate.errors import UsageError
from annotate.testing import speech_like


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "data"
    write_audio(root / "a.wav", speech_like(2.0, seed=1), 16000)
    write_audio(root / "sub" / "b.FLAC", speech_like(2.0, seed=2), 16000)
    (root / "sub" / "list.csv").write_text("path\nb.FLAC\n")
    (root / "validated.tsv").write_text("client_id\tpath\n")
    return root


def test_walk_finds_audio_recursively_and_ignores_tables(corpus):
    recordings, failures = discover([corpus])
    assert [r.key for r in recordings] == ["a.wav", "sub/b.FLAC"]
    assert failures == []


def write_manifest(kind: str, folder, paths: list[str]):
    if kind == "csv":
        target = folder / "m.csv"
        target.write_text("path,speaker\n" + "".join(f"{p},s1\n" for p in paths))
    elif kind == "tsv":
        target = folder / "m.tsv"
        target.write_text("speaker\tpath\n" + "".join(f"s1\t{p}\n" for p in paths))
    elif kind == "parquet":
        target = folder / "m.parquet"
        pd.DataFrame({"path": paths, "speaker": "s1"}).to_parquet(target)
    else:
        target = folder / "m.jsonl"
        target.write_text("".join(json.dumps({"path": p, "speaker": "s1"}) + "\n" for p in paths))
    return target


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "jsonl"])
def test_manifests_resolve_relative_paths_against_their_folder(corpus, tmp_path, kind,
                                                               model_args):
    manifest = write_manifest(kind, corpus, ["a.wav", "sub/b.FLAC", "a.wav", "gone.wav"])
    out = tmp_path / f"{kind}.parquet"
    result = annotate.run([manifest], out, jobs=1, **model_args)
    frame = pd.read_parquet(out)
    assert sorted(frame["path"].unique()) == ["a.wav", "sub/b.FLAC"]  # duplicate row annotated once
    failures = pd.read_parquet(tmp_path / f"{kind}.failures.parquet")
    assert failures.to_dict("records") == [
        {"path": "gone.wav", "error": "missing", "message": failures["message"][0]}]
    assert "no such file" in failures["message"][0]
    assert result.failed == 1


def test_absolute_paths_in_a_manifest_are_kept_as_written(corpus, tmp_path):
    manifest = write_manifest("csv", tmp_path, [str(corpus / "a.wav")])
    recordings, _ = discover([manifest])
    assert recordings[0].key == str(corpus / "a.wav")


def test_common_voice_tsv_resolves_under_clips(tmp_path):
    locale = tmp_path / "cv" / "de"
    write_audio(locale / "clips" / "common_voice_de_1.mp3", speech_like(2.0, 48000), 48000)
    (locale / "validated.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\n"
        'abc\tcommon_voice_de_1.mp3\tEr sagte "Hallo\t2\n'
    )
    recordings, failures = discover([locale / "validated.tsv"])
    assert failures == []
    assert recordings[0].key == "common_voice_de_1.mp3"
    assert recordings[0].source == str(locale / "clips" / "common_voice_de_1.mp3")


def test_manifest_without_path_column_is_a_usage_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.wav,x\n")
    with pytest.raises(UsageError, match="no 'path' column"):
        discover([tmp_path / "m.csv"])


def test_malformed_manifest_lines_become_failures(tmp_path, corpus):
    (corpus / "m.jsonl").write_text('{"path": "a.wav"}\n{not json\n')
    (corpus / "m.tsv").write_text("path\tspeaker\na.wav\ts1\ttoo\tmany\n")
    _, json_failures = discover([corpus / "m.jsonl"])
    _, tsv_failures = discover([corpus / "m.tsv"])
    assert [(f.path, f.error) for f in json_failures] == [("m.jsonl:2", "manifest")]
    assert [(f.path, f.error) for f in tsv_failures] == [("m.tsv:2", "manifest")]


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="input not found"):
        discover([tmp_path / "nowhere"])
