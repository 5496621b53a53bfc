"""The worker's job: decode a span of a recording, cut it, detect speech, compute features.

This runs in joblib workers (threads of the main process, or worker
processes that import only numpy, scipy, soundfile and soxr, never
TensorFlow). Every failure comes back as data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from annotate.audio.decode import AudioInfo, probe, read_span
from annotate.audio.discover import Failure, Recording
from annotate.errors import InputError
from annotate.features import FeatureParams, features_of_segments
from annotate.prepare.segment import equal_length_runs, segment_bounds
from annotate.prepare.speech import detect_speech, warmup_samples

#: Recordings longer than this are split into several tasks of about this
#: length (a run's worker tasks; a whole recording is never held as audio),
#: so that a long file's work spreads over the workers.
CHUNK_S = 120.0


@dataclass(frozen=True)
class SegmentSettings:
    """How recordings are cut and which segments count as speech.

    Attributes:
        speech_detector: ``"silero"`` or ``"energy"`` (:mod:`annotate.prepare.speech`).
        speech_threshold: The detector's threshold: a frame probability
            (``silero``) or a frame level in dBFS (``energy``).
        unsure_p: ``silero`` with its second stage: the frame probability
            from which a segment that is not speech is unsure, and gets its
            features too, for the speech head to decide (None: no second stage).
    """

    window_s: float = 3.0
    hop_s: float = 3.0
    sampling_rate: int = 16000
    speech_detector: str = "silero"
    speech_threshold: float = 0.5
    unsure_p: float | None = None


@dataclass(frozen=True)
class Chunk:
    """A task: segments ``[first, stop)`` of one recording."""

    index: int
    recording: Recording
    info: AudioInfo
    bounds: np.ndarray = field(compare=False)
    first: int
    stop: int

    @property
    def last(self) -> bool:
        return self.stop == len(self.bounds)


@dataclass
class ChunkResult:
    """What a worker sends back for one chunk.

    Attributes:
        bounds: np.ndarray [shape=(n, 2), float64] segment start/end seconds.
        speech: np.ndarray [shape=(n,), bool].
        features: One array per feature setting, each
            [shape=(n_encoded, frames, n_mels), float32], of the speech and
            the unsure segments, in order.
        speech_p: np.ndarray [shape=(n,), float64]: the detector's probability
            of speech (NaN where it gives none).
        speech_s: np.ndarray [shape=(n,), float64]: seconds of speech.
        unsure: np.ndarray [shape=(n,), bool]: segments for the second stage.
        unsure_s: np.ndarray [shape=(n,), float64]: their seconds of speech if it finds speech.
    """

    index: int
    recording: Recording
    last: bool
    bounds: np.ndarray
    speech: np.ndarray
    features: dict[FeatureParams, np.ndarray]
    speech_p: np.ndarray | None = None
    speech_s: np.ndarray | None = None
    unsure: np.ndarray | None = None
    unsure_s: np.ndarray | None = None
    failure: Failure | None = None


@dataclass
class RecordingFeatures:
    """A whole recording, ready for inference.

    Attributes:
        key: The ``path`` of the output.
        bounds: np.ndarray [shape=(n, 2), float64] segment start/end in seconds.
        speech: np.ndarray [shape=(n,), bool].
        features: Per feature setting, the encoded segments' features (the
            speech and the unsure ones, in order) as one array per chunk, each
            [shape=(n_chunk_encoded, frames, n_mels)] (kept apart: joining a
            long recording's chunks would copy them).
        speech_p: np.ndarray [shape=(n,), float64]: the speech detector's
            probability of speech (NaN where it gives none; None: not known).
        speech_s: np.ndarray [shape=(n,), float64]: seconds of speech in each
            segment (None: a speech segment's whole duration).
        unsure: np.ndarray [shape=(n,), bool]: the segments left to the
            detector's second stage (None: none). They stay unsure after it
            decided; the ones it found speech are then also ``speech``.
        unsure_s: np.ndarray [shape=(n,), float64]: an unsure segment's
            seconds of speech, should the second stage find speech there.
    """

    key: str
    bounds: np.ndarray
    speech: np.ndarray
    features: dict[FeatureParams, list[np.ndarray]]
    speech_p: np.ndarray | None = None
    speech_s: np.ndarray | None = None
    unsure: np.ndarray | None = None
    unsure_s: np.ndarray | None = None

    @property
    def duration_s(self) -> float:
        return float(self.bounds[-1, 1]) if len(self.bounds) else 0.0

    @property
    def encoded(self) -> np.ndarray:
        """The segments whose features are held: speech, and unsure ones."""
        return self.speech if self.unsure is None else self.speech | self.unsure

    def speech_rows(self) -> np.ndarray:
        """Where each speech segment's features lie among the held rows."""
        return np.flatnonzero(self.speech[self.encoded])

    def speech_features(self, params: FeatureParams) -> list[np.ndarray]:
        """The speech segments' features, as arrays to take in order.

        The held arrays themselves where every held row is speech (a stack
        spilled to disk is then read in its turn), else the rows picked out.
        """
        stacks = self.features[params]
        if self.unsure is None or not (self.unsure & ~self.speech).any():
            return list(stacks)
        return [np.concatenate([np.asarray(a) for a in stacks])[self.speech_rows()]]

    def with_second_stage(self, found: np.ndarray, probability: np.ndarray) -> RecordingFeatures:
        """The recording once the second stage has decided its unsure segments.

        Args:
            found: np.ndarray [shape=(n,), bool]: unsure segments found speech.
            probability: np.ndarray [shape=(n,), float64]: the second stage's
                probability of speech, read where a segment is unsure.
        """
        unsure = self.unsure if self.unsure is not None else np.zeros(len(self.speech), bool)
        found = found & unsure
        speech_p = None if self.speech_p is None else np.where(unsure, probability, self.speech_p)
        speech_s = (None if self.speech_s is None
                    else np.where(found, self.unsure_s, self.speech_s))
        return dataclasses.replace(self, speech=self.speech | found, speech_p=speech_p,
                                   speech_s=speech_s)


def assemble_recording(chunks: list[ChunkResult]) -> RecordingFeatures | Failure:
    """Join a recording's chunk results, or return its first failure."""
    for chunk in chunks:
        if chunk.failure is not None:
            return chunk.failure
    first = chunks[0]
    return RecordingFeatures(
        first.recording.key,
        np.concatenate([c.bounds for c in chunks]),
        np.concatenate([c.speech for c in chunks]),
        {p: [c.features[p] for c in chunks] for p in first.features},
        np.concatenate([c.speech_p for c in chunks]),
        np.concatenate([c.speech_s for c in chunks]),
        np.concatenate([c.unsure for c in chunks]),
        np.concatenate([c.unsure_s for c in chunks]),
    )


def featurize_recording(recording: Recording, settings: SegmentSettings,
                        params: tuple[FeatureParams, ...], chunk_s: float = CHUNK_S,
                        index: int = 0) -> RecordingFeatures | Failure:
    """A whole recording's segments, speech decisions and features, or its failure.

    What a run does to each recording, chunk after chunk in one thread: the
    cluster's workers, the app and training call this; a local run spreads
    the same chunks over its workers (:func:`plan_chunks`, :func:`featurize_chunk`).
    """
    planned = plan_chunks(index, recording, settings, chunk_s)
    if isinstance(planned, Failure):
        return planned
    return assemble_recording([featurize_chunk(chunk, settings, params) for chunk in planned])


def plan_chunks(
    index: int, recording: Recording, settings: SegmentSettings, chunk_s: float
) -> list[Chunk] | Failure:
    """Probe a recording and split its segments into tasks of about ``chunk_s`` seconds."""
    try:
        info = probe(recording.source)
    except InputError as error:
        return Failure(recording.key, error.kind, str(error))
    except Exception as error:  # noqa: BLE001 - one bad file must never stop the batch
        return Failure(recording.key, "error", f"{type(error).__name__}: {error}")
    if info.frames <= 0:
        return Failure(recording.key, "empty", "the file holds no audio samples")
    bounds = segment_bounds(info.duration_s, settings.window_s, settings.hop_s)
    if len(bounds) == 0:  # shorter than a microsecond: no segment to write
        return Failure(recording.key, "empty",
                       f"too short to annotate ({info.frames} samples at {info.sampling_rate} Hz)")
    per_chunk = max(1, int(math.floor(chunk_s / settings.hop_s)))
    return [
        Chunk(index, recording, info, bounds, first, min(first + per_chunk, len(bounds)))
        for first in range(0, len(bounds), per_chunk)
    ]


def featurize_chunk(
    chunk: Chunk, settings: SegmentSettings, params: tuple[FeatureParams, ...]
) -> ChunkResult:
    """Decode, segment, detect speech and compute each model's features for one chunk."""
    bounds = chunk.bounds[chunk.first : chunk.stop]
    try:
        span_start, span_end = float(bounds[0, 0]), float(bounds[-1, 1])
        rate = settings.sampling_rate
        audio = read_span(chunk.recording.source, chunk.info, span_start, span_end, rate)
        starts = np.rint((bounds[:, 0] - span_start) * rate).astype(int)
        ends = np.rint((bounds[:, 1] - span_start) * rate).astype(int)
        pieces = [audio[lo:hi] for lo, hi in zip(starts, ends, strict=True)]
        first = int(np.rint(span_start * rate))
        warm = min(warmup_samples(settings.speech_detector, rate), first)
        heard = audio
        if warm:  # read apart, so that the segments' own samples stay as they were
            head = read_span(chunk.recording.source, chunk.info, (first - warm) / rate,
                             span_start, rate)[-warm:]
            heard = np.concatenate([np.zeros(warm - len(head), np.float32), head, audio])
        decisions = detect_speech(heard, first - warm, np.stack([starts, ends], axis=1) + first,
                                  rate, settings.speech_detector, settings.speech_threshold,
                                  settings.unsure_p)
        speech = decisions.speech
        parts: dict[FeatureParams, list[np.ndarray]] = {p: [] for p in params}
        for group in equal_length_runs(pieces, np.flatnonzero(speech | decisions.unsure)):
            stacked = features_of_segments(np.stack([pieces[i] for i in group]), params)
            for p, part in zip(params, stacked, strict=True):
                parts[p].append(part)
        features = {
            p: (np.concatenate(parts[p]) if parts[p]
                else np.zeros((0, p.n_frames, p.n_mels), np.float32))
            for p in params
        }
    except InputError as error:
        return _failed(chunk, Failure(chunk.recording.key, error.kind, str(error)))
    except MemoryError:
        return _failed(chunk, Failure(chunk.recording.key, "memory", "out of memory"))
    except Exception as error:  # noqa: BLE001 - one bad file must never stop the batch
        message = f"{type(error).__name__}: {error}"
        return _failed(chunk, Failure(chunk.recording.key, "error", message))
    return ChunkResult(chunk.index, chunk.recording, chunk.last, bounds, speech, features,
                       decisions.probability, decisions.seconds, decisions.unsure,
                       decisions.unsure_s)


def _failed(chunk: Chunk, failure: Failure) -> ChunkResult:
    empty = np.zeros((0, 2))
    return ChunkResult(chunk.index, chunk.recording, chunk.last, empty, np.zeros(0, bool), {},
                       failure=failure)
