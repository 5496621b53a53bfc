"""Resume: an interrupted run continues where it stopped and gives the same table."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import write_audio

import annotate
from annotate.errors import StateError, UsageError
from annotate.pipeline.progress import Progress
from annotate.testing import speech_like


class StopAfter(Progress):
    """Interrupts the run (as Ctrl-C would) once ``n`` recordings are written."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def advance(self, recordings: int, audio_s: float) -> None:
        self.seen += recordings
        if self.seen >= self.n:
            raise KeyboardInterrupt


class Handovers(Progress):
    """Records how many recordings each hand-over to the store brings."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def advance(self, recordings: int, audio_s: float) -> None:
        self.sizes.append(recordings)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    for i in range(6):
        write_audio(root / f"r{i}.wav", speech_like(3.0 + i, seed=i), 16000)
    return root


def test_interrupted_run_resumes_to_the_uninterrupted_table(corpus, tmp_path, model_args):
    reference = tmp_path / "reference.parquet"
    annotate.run([corpus], reference, jobs=1, **model_args)

    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        annotate.run([corpus], out, jobs=1, batch_size=1, progress=StopAfter(2), **model_args)
    assert not out.exists()
    parts = list((tmp_path / "out.parquet.partial" / "parts").glob("*.parquet"))
    assert parts, "finished recordings must be kept when a run is interrupted"

    result = annotate.run([corpus], out, jobs=1, **model_args)
    assert result.skipped >= 2 and result.skipped + result.annotated == 6
    assert not (tmp_path / "out.parquet.partial").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference))


def test_the_first_recording_is_written_alone_and_the_rest_in_batches(corpus, tmp_path,
                                                                      model_args):
    seen = Handovers()
    annotate.run([corpus], tmp_path / "out.parquet", jobs=1, progress=seen, **model_args)
    assert seen.sizes[0] == 1 and sum(seen.sizes) == 6
    assert max(seen.sizes[1:]) > 1  # the others wait for a batch (256 segments, or 5 s)


def test_other_settings_against_partial_state_stop_unless_overwrite(corpus, tmp_path, model_args):
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        annotate.run([corpus], out, jobs=1, batch_size=1, progress=StopAfter(1), **model_args)
    with pytest.raises(StateError, match="other settings or models"):
        annotate.run([corpus], out, window_s=2.0, jobs=1, **model_args)
    result = annotate.run([corpus], out, window_s=2.0, jobs=1, overwrite=True, **model_args)
    assert result.skipped == 0 and result.annotated == 6
    assert pd.read_parquet(out)["end_s"].diff().dropna().le(2.0).all()


def test_a_complete_output_is_not_redone(corpus, tmp_path, model_args):
    out = tmp_path / "out.parquet"
    annotate.run([corpus], out, jobs=1, **model_args)
    before = out.stat().st_mtime_ns
    assert annotate.run([corpus], out, jobs=1, **model_args).already_complete
    assert out.stat().st_mtime_ns == before
    with pytest.raises(UsageError, match="--overwrite"):
        annotate.run([corpus], out, window_s=1.0, jobs=1, **model_args)


def test_a_second_run_on_the_same_output_refuses(corpus, tmp_path, model_args):
    import fcntl

    out = tmp_path / "out.parquet"
    partial = tmp_path / "out.parquet.partial"
    partial.mkdir()
    with open(partial / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StateError, match="another annotate run"):
            annotate.run([corpus], out, jobs=1, **model_args)
    annotate.run([corpus], out, jobs=1, **model_args)
    assert out.exists()


def test_a_failed_recording_counts_as_done_on_resume_unless_overwrite(corpus, tmp_path,
                                                                      model_args):
    """A failure is a finished recording: a resume keeps it (as a cluster run always did);
    --overwrite tries it again, and keeps the annotated recordings of the same settings."""
    (corpus / "broken.wav").write_bytes(b"RIFF junk")
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):  # broken.wav fails first, then r0 is written
        annotate.run([corpus], out, jobs=1, batch_size=1, progress=StopAfter(2), **model_args)
    state = tmp_path / "state"
    shutil.copytree(tmp_path / "out.parquet.partial", state)
    write_audio(corpus / "broken.wav", speech_like(2.0, seed=9), 16000)  # mended meanwhile

    result = annotate.run([corpus], out, jobs=1, **model_args)
    assert [f.path for f in result.failures] == ["broken.wav"]
    assert result.skipped == 1 and result.annotated == 5
    assert "broken.wav" not in set(pd.read_parquet(out)["path"])

    for written in (out, tmp_path / "out.failures.parquet"):
        written.unlink()
    shutil.copytree(state, tmp_path / "out.parquet.partial")
    result = annotate.run([corpus], out, jobs=1, overwrite=True, **model_args)
    assert result.failed == 0 and result.skipped == 1 and result.annotated == 6
    assert "broken.wav" in set(pd.read_parquet(out)["path"])
    assert len(pd.read_parquet(tmp_path / "out.failures.parquet")) == 0
