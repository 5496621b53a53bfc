"""``annotate run --cluster``: Dask workers give the local run's tables; runs resume by recording,
from parts either executor wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import write_audio
from typer.testing import CliRunner

import annotate
from annotate.cli import app
from annotate.errors import StateError, UsageError
from annotate.pipeline.progress import Progress
from annotate.pipeline.store import PART_KEY, read_metadata
from annotate.testing import speech_like, voice


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A two-process Dask cluster on loopback; its workers keep their models between tests."""
    import distributed  # a test dependency (the test extra includes annotate[distributed])
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=":0", local_directory=str(tmp_path_factory.mktemp("dask")),
    ) as cluster:
        yield cluster.scheduler_address


class Interrupted(Exception):
    """Stands for a driver killed after the workers wrote every part."""


def interrupt_before_the_tables(*args, **kwargs):
    raise Interrupted


class Started(Progress):
    """Records how many recordings a run found already done, and its messages."""

    def __init__(self) -> None:
        self.already_done, self.messages = None, []

    def start(self, total_recordings: int, already_done: int) -> None:
        self.already_done = already_done

    def message(self, text: str) -> None:
        self.messages.append(text)


def test_cluster_run_writes_the_local_runs_tables(mixed_corpus, tmp_path, model_args,
                                                   scheduler):
    sys.modules.pop("annotate.pipeline.cluster", None)
    local, clustered = tmp_path / "local.parquet", tmp_path / "cluster.parquet"
    annotate.run([mixed_corpus], local, jobs=1, **model_args)
    assert "annotate.pipeline.cluster" not in sys.modules, "a local run must not load the Dask code"

    result = annotate.run([mixed_corpus], clustered, cluster=scheduler, shard_size=3,
                          **model_args)

    assert (result.recordings, result.annotated, result.skipped, result.failed) == (8, 8, 0, 0)
    pd.testing.assert_frame_equal(pd.read_parquet(clustered), pd.read_parquet(local),
                                  check_exact=True)
    assert read_metadata(clustered) == read_metadata(local)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cluster.failures.parquet"),
                                  pd.read_parquet(tmp_path / "local.failures.parquet"))
    assert not (tmp_path / "cluster.parquet.partial").exists()
    again = annotate.run([mixed_corpus], clustered, cluster=scheduler, shard_size=3, **model_args)
    assert again.already_complete


def test_the_cluster_adapts_emotions_to_speakers_as_a_local_run(tmp_path, model_args,
                                                                  scheduler):
    for speaker, pitch in (("anna", 220.0), ("bert", 110.0)):
        for i in range(7):
            write_audio(tmp_path / "in" / speaker / f"{i}.wav",
                        voice(3.0, pitch * (1 + 0.05 * i), seed=i), 16000)
    local, clustered = tmp_path / "local.parquet", tmp_path / "cluster.parquet"
    annotate.run([tmp_path / "in"], local, jobs=1, speakers="folder", **model_args)
    annotate.run([tmp_path / "in"], clustered, cluster=scheduler, shard_size=3,
                 speakers="folder", **model_args)
    pd.testing.assert_frame_equal(pd.read_parquet(clustered), pd.read_parquet(local),
                                  check_exact=True)
    assert read_metadata(clustered)["speaker_adaptation"]["speakers"] == 2
    assert read_metadata(clustered) == read_metadata(local)


def test_a_rerun_recomputes_only_the_recordings_whose_part_is_missing_or_broken(
        mixed_corpus, tmp_path, model_args, scheduler, monkeypatch):
    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        patch.setattr("annotate.pipeline.store.Store.finalize",
                      interrupt_before_the_tables)
        with pytest.raises(Interrupted):
            annotate.run([mixed_corpus], out, cluster=scheduler, shard_size=3, **model_args)
    parts = sorted((tmp_path / "out.parquet.partial" / "parts").glob("*.parquet"))
    assert len(parts) == 3 and not out.exists()
    lost, broken = parts[1], parts[2]
    redo = [key for part in (lost, broken)
            for key, _ in json.loads(pq.read_schema(part).metadata[PART_KEY])["recordings"]]
    lost.unlink()
    broken.write_bytes(broken.read_bytes()[:-100])  # truncated, as by a full disk

    progress = Started()
    result = annotate.run([mixed_corpus], out, cluster=scheduler, shard_size=3,
                          progress=progress, **model_args)

    assert result.annotated == len(redo) and result.skipped == 8 - len(redo)
    assert progress.already_done == 8 - len(redo)
    assert progress.messages == [
        f"discarded unreadable part {broken.name}; its recordings are redone"]
    reference = tmp_path / "reference.parquet"
    annotate.run([mixed_corpus], reference, jobs=1, **model_args)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference))
    assert not (tmp_path / "out.parquet.partial").exists()


class StopAfter(Progress):
    """Interrupts the run (as Ctrl-C would) once ``n`` recordings are written or failed."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def advance(self, recordings: int, audio_s: float) -> None:
        self.seen += recordings
        if self.seen >= self.n:
            raise KeyboardInterrupt


def test_a_run_started_locally_resumes_on_the_cluster_and_the_other_way_round(
        mixed_corpus, tmp_path, model_args, scheduler):
    """One store, by recording: either executor resumes what the other left, failures
    included (a failed recording is done, not tried again), to the uninterrupted tables."""
    (mixed_corpus / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)
    reference = tmp_path / "reference.parquet"
    annotate.run([mixed_corpus], reference, jobs=1, **model_args)
    local, clustered = {"jobs": 1, "batch_size": 1}, {"cluster": scheduler, "shard_size": 3}
    for first, then, name in ((local, clustered, "local-first"),
                              (clustered, local, "cluster-first")):
        out = tmp_path / f"{name}.parquet"
        with pytest.raises(KeyboardInterrupt):
            annotate.run([mixed_corpus], out, progress=StopAfter(3), **first, **model_args)
        parts = sorted((tmp_path / f"{name}.parquet.partial" / "parts").glob("*.parquet"))
        metas = [json.loads(pq.read_schema(p).metadata[PART_KEY]) for p in parts]
        kept = [key for meta in metas for key, _ in meta["recordings"]]
        failed = [path for meta in metas for path, _, _ in meta["failures"]]
        assert kept and not out.exists()

        progress = Started()
        result = annotate.run([mixed_corpus], out, progress=progress, **then, **model_args)

        assert (result.skipped, result.annotated, result.failed) == (len(kept), 8 - len(kept), 1)
        assert progress.already_done == len(kept) + len(failed)
        pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference),
                                      check_exact=True)
        assert read_metadata(out) == read_metadata(reference)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{name}.failures.parquet"),
                                      pd.read_parquet(tmp_path / "reference.failures.parquet"))
        assert not (tmp_path / f"{name}.parquet.partial").exists()


def test_other_settings_against_partial_state_stop(mixed_corpus, tmp_path, model_args,
                                                  scheduler, monkeypatch):
    out = tmp_path / "out.parquet"
    (mixed_corpus / "nested").rename(tmp_path / "elsewhere")  # fewer recordings, faster
    monkeypatch.setattr("annotate.pipeline.store.Store.finalize",
                        interrupt_before_the_tables)
    with pytest.raises(Interrupted):
        annotate.run([mixed_corpus], out, cluster=scheduler, **model_args)
    with pytest.raises(StateError, match="other settings or models"):
        annotate.run([mixed_corpus], out, cluster=scheduler, window_s=2.0, **model_args)


def test_a_broken_file_becomes_a_failure_row(mixed_corpus, tmp_path, model_cli_args, scheduler):
    (mixed_corpus / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)
    (mixed_corpus / "empty.flac").write_bytes(b"")
    out = tmp_path / "out.parquet"
    cli = CliRunner().invoke(app, ["run", str(mixed_corpus), "-o", str(out), "--cluster",
                                   scheduler, "--shard-size", "4", "-q", *model_cli_args])
    assert cli.exit_code == 1, cli.output
    failures = pd.read_parquet(tmp_path / "out.failures.parquet")
    assert dict(zip(failures["path"], failures["error"], strict=True)) == {"broken.wav": "decode",
                                                               "empty.flac": "empty"}
    assert len(set(pd.read_parquet(out)["path"])) == 8
    assert "broken.wav" not in set(pd.read_parquet(out)["path"])


def test_without_dask_the_cluster_option_says_what_to_install(mixed_corpus, tmp_path,
                                                             model_args, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    with pytest.raises(UsageError, match=r"annotate\[distributed\]"):
        annotate.run([mixed_corpus], tmp_path / "o.parquet", cluster="tcp://127.0.0.1:1",
                     **model_args)


def test_the_command_line_does_not_import_dask():
    code = ("import sys, annotate.cli, annotate.pipeline.run, annotate.pipeline.local; "
            "print(sorted(m for m in ('dask', 'distributed', 'fsspec') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, check=True).stdout.strip()
    assert imported == "[]"


def test_the_output_can_live_on_an_object_store(tmp_path, model_args):
    """An fsspec URL as output: parts and tables are single puts (in-memory store, threads)."""
    import distributed  # a test dependency (the test extra includes annotate[distributed])
    import fsspec

    corpus = tmp_path / "corpus"
    for i in range(3):
        write_audio(corpus / f"r{i}.wav", speech_like(2.0 + i, seed=i), 16000)
    local = tmp_path / "local.parquet"
    annotate.run([corpus], local, jobs=1, **model_args)
    store = fsspec.filesystem("memory")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        result = annotate.run([corpus], "memory://bucket/run/out.parquet",
                              cluster=cluster.scheduler_address, shard_size=2, **model_args)
    try:
        assert result.output == "memory://bucket/run/out.parquet"
        with store.open("/bucket/run/out.parquet", "rb") as handle:
            table = pq.read_table(handle)
        assert json.loads(table.schema.metadata[b"annotate"]) == read_metadata(local)
        pd.testing.assert_frame_equal(table.to_pandas(), pd.read_parquet(local))
        assert store.exists("/bucket/run/out.failures.parquet")
        assert not store.exists("/bucket/run/out.parquet.partial")
    finally:
        store.rm("/bucket", recursive=True)


def test_an_unreachable_scheduler_is_a_usage_error(mixed_corpus, tmp_path, model_args):
    import dask
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(UsageError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
            annotate.run([mixed_corpus], tmp_path / "o.parquet", cluster="tcp://127.0.0.1:1",
                         **model_args)
    assert not (tmp_path / "o.parquet.partial").exists()


def local_and_cluster_runs(tmp_path, scheduler, monkeypatch, seeds, **options):
    """Two short clips through the bundled models, locally and on the cluster."""
    monkeypatch.delenv("ANNOTATE_MODELS")  # the suite hides the bundled models by default
    corpus = tmp_path / "corpus"
    for i, (seconds, seed) in enumerate(seeds):
        write_audio(corpus / f"{i}.wav", speech_like(seconds, seed=seed), 16000)
    local, clustered = tmp_path / "local.parquet", tmp_path / "cluster.parquet"
    annotate.run([corpus], local, jobs=1, **options)
    annotate.run([corpus], clustered, cluster=scheduler, shard_size=1, **options)
    return local, clustered


@pytest.mark.parametrize("languages, source", [(["en", "ja"], "whisper"), (None, "cascade")])
def test_whisper_language_step_gives_the_local_table_on_the_cluster(tmp_path, scheduler,
                                                                     monkeypatch, languages,
                                                                     source):
    """Whisper's language step on the bundled models: for --languages beyond the head's,
    and in the default run's cascade."""
    local, clustered = local_and_cluster_runs(tmp_path, scheduler, monkeypatch,
                                              ((4.0, 20), (2.5, 21)), languages=languages)
    frame = pd.read_parquet(clustered)
    if source == "whisper":
        assert {"lang_en", "lang_ja"} <= set(frame.columns) and "lang_de" not in frame.columns
    pd.testing.assert_frame_equal(frame, pd.read_parquet(local), check_exact=True)
    assert read_metadata(clustered)["settings"]["language_id"] == source


@pytest.mark.parametrize("backend", ["keras", "litert"])
def test_the_cluster_runs_every_model_on_the_backend_the_driver_chose(tmp_path, scheduler,
                                                                      monkeypatch, backend):
    """The workers take the driver's plan whole: with --backend keras they run the
    bundled backbone on Keras too, though LiteRT has a current export of it (they chose
    LiteRT on their own before, and the probabilities moved by up to 4e-5)."""
    local, clustered = local_and_cluster_runs(tmp_path, scheduler, monkeypatch,
                                              ((3.5, 40), (2.0, 41)), backend=backend)
    pd.testing.assert_frame_equal(pd.read_parquet(clustered), pd.read_parquet(local),
                                  check_exact=True)
    metadata = read_metadata(clustered)
    assert metadata == read_metadata(local)
    assert {b["backend"] for b in metadata["backbones"]} == {backend}
    assert {m["backend"] for m in metadata["models"]} == {backend}
