"""Which segments hold speech, and how much: the run's speech detectors.

Three detectors, chosen by ``annotate run --speech-detector``:

- ``silero`` (the default): Silero VAD, then, for the segments it is unsure
  of, a second stage on the backbone's states (below).
- ``silero-only``: Silero VAD v6 (MIT), shipped in the package
  (``models/silero-vad``, built by ``scripts/build_speech_detector.py`` from
  its PyPI wheel) and run by :mod:`annotate.prepare.silero`, one thread per
  feature job. It gives each 32 ms frame a probability of speech. A chunk of a recording is
  scored as one stream, from :data:`WARMUP_S` before its first segment, so
  every segment is heard in its context; the frames lie on one grid of the
  whole recording (512 samples from its start), so the decisions do not depend
  on how the recording was cut into chunks, up to the model's memory of
  what came before the warm-up.
- ``energy``: the gate of earlier versions (:func:`annotate.prepare.segment.speech_mask`):
  0.15 s of 25 ms frames louder than a dBFS level, with some level variation.
  It tells silence from sound, not speech from music or noise.

Per segment: ``speech_s``, the seconds of its frames judged speech (frame
probability above the threshold; for the energy gate, loud frames),
``speech_p``, the detector's probability that the segment holds speech (its
highest frame probability; none for the energy gate), and ``speech``: at
least :data:`MIN_SPEECH_S` seconds of speech (or half the segment, for a
shorter last segment).

Silero's second stage: asked with ``unsure_p``, :func:`detect_speech` also
marks the segments it is unsure of (not speech, but a frame at ``unsure_p``
or above). The run encodes those too and lets the speech head on the
backbone's states decide (:mod:`annotate.modelling.speech_head`,
:meth:`annotate.pipeline.annotator.Annotator.annotate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from annotate.prepare.segment import equal_length_runs, speech_mask
from annotate.prepare.silero import SileroVAD
from annotate.resources import resource_dir

#: ``--speech-detector`` choices, the default first.
SPEECH_DETECTORS = ("silero", "silero-only", "energy")
#: Each detector's default ``--speech-threshold``: a frame probability, or a level in dBFS.
DEFAULT_THRESHOLDS = {"silero": 0.5, "silero-only": 0.5, "energy": -45.0}
#: Seconds of speech frames that make a segment speech. With the frame
#: threshold, chosen on validation clips, tracks and speakers (docs/accuracy.md).
MIN_SPEECH_S = 0.25
#: Seconds of audio before a chunk's first segment that the stream hears first.
WARMUP_S = 0.5
#: The bundled detector's folder, inside the package's models.
FOLDER = "silero-vad"


@dataclass(frozen=True)
class SpeechDecisions:
    """A detector's verdict on each segment.

    Attributes:
        speech: np.ndarray [shape=(n,), bool].
        probability: np.ndarray [shape=(n,), float64]: the probability that
            the segment holds speech (NaN for the energy gate, which has none).
        seconds: np.ndarray [shape=(n,), float64]: seconds of speech inside it.
        unsure: np.ndarray [shape=(n,), bool]: not speech, but a frame at
            ``unsure_p`` or above: for the second stage to decide (all false
            without ``unsure_p``).
        unsure_s: np.ndarray [shape=(n,), float64]: seconds of frames at
            ``unsure_p`` or above: a segment's speech should the second stage
            find speech there.
    """

    speech: np.ndarray
    probability: np.ndarray
    seconds: np.ndarray
    unsure: np.ndarray
    unsure_s: np.ndarray


def check_threshold(detector: str, threshold: float) -> None:
    """Refuse a threshold that does not fit ``detector``.

    Raises:
        ValueError: With what the threshold means for that detector.
    """
    if detector.startswith("silero") and not 0.0 < threshold < 1.0:
        hint = (" (a negative value is a dBFS level, the energy gate's: add "
                "--speech-detector energy for it)" if threshold < 0 else "")
        raise ValueError(f"--speech-threshold for the {detector} detector is a frame probability "
                         f"in (0, 1), got {threshold}{hint}")
    if detector == "energy" and not -120.0 <= threshold < 0.0:
        raise ValueError(f"--speech-threshold for the energy detector is a level in "
                         f"[-120, 0) dBFS, got {threshold}")


def warmup_samples(detector: str, sampling_rate: int) -> int:
    """Samples of audio before a chunk that ``detector`` hears first."""
    return int(WARMUP_S * sampling_rate) if detector == "silero" else 0


def detect_speech(audio: np.ndarray, first_sample: int, bounds: np.ndarray, sampling_rate: int,
                  detector: str, threshold: float,
                  unsure_p: float | None = None) -> SpeechDecisions:
    """Decide which segments of a span hold speech.

    Args:
        audio: np.ndarray [shape=(n,), float32]: mono audio of the recording
            from sample ``first_sample`` on, covering every segment.
        first_sample: The recording's sample index of ``audio[0]``.
        bounds: np.ndarray [shape=(m, 2)]: the segments' start and end, in
            samples of the recording.
        sampling_rate: In Hz (16 kHz for ``silero``).
        detector: One of :data:`SPEECH_DETECTORS`.
        threshold: A frame probability (``silero``) or a level in dBFS (``energy``).
        unsure_p: ``silero`` only: the frame probability from which a segment
            that is not speech is marked unsure (None: none is).
    """
    bounds = np.asarray(bounds, np.int64)
    if detector == "energy":
        return _energy(audio, first_sample, bounds, sampling_rate, threshold)
    if detector != "silero":
        raise ValueError(f"unknown speech detector {detector!r}")
    frame = _silero().frame_samples
    # Frames on the recording's own grid, whatever the span: a span starts on it.
    skip = (-first_sample) % frame
    probs = _silero().probabilities(audio[skip:])
    starts = first_sample + skip + frame * np.arange(len(probs))
    return decide_segments(probs, starts, frame, bounds, sampling_rate, threshold, unsure_p)


def decide_segments(probs: np.ndarray, starts: np.ndarray, frame: int, bounds: np.ndarray,
                    sampling_rate: int, threshold: float,
                    unsure_p: float | None = None) -> SpeechDecisions:
    """Each segment's decision from frame probabilities.

    Args:
        probs: np.ndarray [shape=(k,)]: each frame's probability of speech.
        starts: np.ndarray [shape=(k,)]: each frame's first sample, in order.
        frame: Samples a frame.
        bounds: np.ndarray [shape=(m, 2)]: segments, in samples; a segment
            holds the frames that start inside it.
        sampling_rate: In Hz.
        threshold: Frame probability above which a frame is speech.
        unsure_p: Frame probability from which a segment that is not speech
            is unsure (None: none is).
    """
    frame_s = frame / sampling_rate
    durations = (bounds[:, 1] - bounds[:, 0]) / sampling_rate
    probability = np.zeros(len(bounds))
    seconds = np.zeros(len(bounds))
    loose = np.zeros(len(bounds))
    for i, (lo, hi) in enumerate(bounds):
        mine = probs[np.searchsorted(starts, lo) : np.searchsorted(starts, hi)]
        if len(mine):
            probability[i] = float(mine.max())
            seconds[i] = min(float((mine > threshold).sum()) * frame_s, durations[i])
            if unsure_p is not None:
                loose[i] = min(float((mine >= unsure_p).sum()) * frame_s, durations[i])
    speech = (seconds >= np.minimum(MIN_SPEECH_S, durations / 2) - 1e-9) & (seconds > 0)
    unsure = (~speech & (probability >= unsure_p) if unsure_p is not None
              else np.zeros(len(bounds), bool))
    return SpeechDecisions(speech, probability, seconds, unsure, loose)


def _energy(audio, first_sample, bounds, sampling_rate, threshold) -> SpeechDecisions:
    pieces = [audio[lo - first_sample : hi - first_sample] for lo, hi in bounds]
    speech = np.zeros(len(pieces), bool)
    seconds = np.zeros(len(pieces))
    for group in equal_length_runs(pieces, range(len(pieces))):
        mask, active = speech_mask(np.stack([pieces[i] for i in group]), sampling_rate,
                                   threshold, return_active_s=True)
        speech[group], seconds[group] = mask, active
    return SpeechDecisions(speech, np.full(len(pieces), np.nan), seconds,
                           np.zeros(len(pieces), bool), np.zeros(len(pieces)))


@cache
def _silero() -> SileroVAD:
    return SileroVAD(resource_dir("models") / FOLDER)


def detector_description(detector: str) -> dict:
    """What the run's metadata records of ``detector`` (and its fingerprint reads).

    Raises:
        ModelError: The bundled Silero folder is missing or broken.
    """
    if detector == "energy":
        return {"name": "energy"}
    spec = _silero().spec
    return {"name": spec["name"], "file": spec["file"], "sha256": spec["sha256"],
            "source": spec["source"], "encoder_sha256": spec["encoder_sha256"],
            "recurrent_sha256": spec["recurrent_sha256"]}
