"""A run's plan: every decision of ``annotate run``, resolved once, frozen.

:func:`plan_run` turns the user's options and the model set into a
:class:`RunPlan`: how recordings are cut, the candidate languages and where
their probabilities come from, the backend of every model and backbone
(keyed by content hash, so that a cluster's workers, whose copies of the
model folders live elsewhere, run each model exactly as the driver
decided), batch and chunk sizes, the speakers option, the output schema, the
metadata and the fingerprint. The annotator, the cluster's shard task and
the app's clip annotator take the plan whole; the fingerprint is computed
from what the plan holds, so what is fingerprinted is what runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

import pyarrow as pa

from annotate._version import __version__
from annotate.errors import ModelError, UsageError, expected_one_of
from annotate.modelling.language_source import LanguageSource, choose_language_source
from annotate.modelling.model_folder import folder_hash
from annotate.modelling.model_set import ModelSet
from annotate.modelling.speech_head import SpeechHead, bundled_speech_head
from annotate.pipeline.speakers import SPEAKER_SOURCES
from annotate.prepare.featurize import CHUNK_S, SegmentSettings
from annotate.prepare.speech import (
    DEFAULT_THRESHOLDS,
    SPEECH_DETECTORS,
    check_threshold,
    detector_description,
)
from annotate.schema import load_schema, segments_schema


@dataclass(frozen=True)
class RunPlan:
    """Everything a run decides, resolved once (:func:`plan_run`).

    Attributes:
        segments: How recordings are cut and which segments hold speech.
        language: Where the language probabilities come from.
        backends: ``(content hash, backend)`` of each model.
        backbone_backends: ``(name, content hash, backend)`` of each backbone.
        batch_size: Speech segments gathered per inference round (the table
            does not depend on it).
        chunk_s: Seconds of a recording per feature task.
        speakers: The speakers option (``"folder"``, ``"manifest"`` or None).
        speech_head: The speech detector's second stage (None: off).
        metadata: The output's metadata, with its ``fingerprint``.
    """

    segments: SegmentSettings
    language: LanguageSource
    backends: tuple[tuple[str, str], ...]
    backbone_backends: tuple[tuple[str, str, str], ...]
    batch_size: int = 256
    chunk_s: float = CHUNK_S
    speakers: str | None = None
    speech_head: SpeechHead | None = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def fingerprint(self) -> str:
        """Identifies what the run computes: settings, models, routes and backends."""
        return self.metadata["fingerprint"]

    @property
    def schema(self) -> pa.Schema:
        """The segments table's schema (one ``lang_<code>`` column per language column)."""
        return segments_schema(self.language.columns)

    def backend_of(self, folder) -> str:
        """The backend of the model in ``folder`` (found by its content hash).

        Raises:
            ModelError: The folder is not one of the plan's models.
        """
        digest = folder_hash(folder)
        for known, backend in self.backends:
            if known == digest:
                return backend
        raise ModelError(f"{folder} ({digest}) is not a model of this run's plan")

    def backbone_backend_of(self, name: str, folder) -> str:
        """The backend of backbone ``name`` in ``folder`` (found by its content hash).

        Raises:
            ModelError: The folder is not one of the plan's backbones.
        """
        digest = folder_hash(folder)
        for known_name, known, backend in self.backbone_backends:
            if known_name == name and known == digest:
                return backend
        raise ModelError(f"{folder} ({digest}) is not the backbone {name} of this run's plan")


def plan_run(
    models: ModelSet,
    *,
    languages: Sequence[str] | None = None,
    language_id: str = "auto",
    window_s: float = 3.0,
    hop_s: float | None = None,
    speech_detector: str = "silero",
    speech_threshold: float | None = None,
    batch_size: int = 256,
    backend: str | None = None,
    speakers: str | None = None,
    chunk_s: float = CHUNK_S,
) -> RunPlan:
    """Check the options against the models and resolve every decision of the run.

    Args are those of :func:`annotate.pipeline.run.run`; ``models`` are the
    run's models (:meth:`ModelSet.with_window` applied here).

    Raises:
        UsageError: A bad option.
        ModelError: A backend that cannot run a model.
    """
    hop_s = window_s if hop_s is None else hop_s
    if window_s <= 0 or hop_s <= 0:
        raise UsageError(f"window and hop must be positive, got {window_s} and {hop_s}")
    if speech_detector not in SPEECH_DETECTORS:
        raise UsageError(expected_one_of("speech detector", speech_detector, SPEECH_DETECTORS))
    if speech_threshold is None:
        speech_threshold = DEFAULT_THRESHOLDS[speech_detector]
    try:
        check_threshold(speech_detector, float(speech_threshold))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if speakers is not None and speakers not in SPEAKER_SOURCES:
        raise UsageError(expected_one_of("speaker source", speakers, SPEAKER_SOURCES))
    models = models.with_window(window_s)
    source = choose_language_source(models, languages, language_id)
    asked = source.candidates if languages else ()
    # silero-only is Silero VAD without its second stage.
    head = second_stage(models) if speech_detector == "silero" else None
    detector = "silero" if speech_detector == "silero-only" else speech_detector
    segments = SegmentSettings(
        window_s=window_s, hop_s=hop_s, sampling_rate=models.feature_params[0].sampling_rate,
        speech_detector=detector, speech_threshold=float(speech_threshold),
        unsure_p=head.unsure_p if head is not None else None,
    )
    backends = models.choose_backends(backend)
    backbone_backends = models.choose_backbone_backends(backend, source)
    described = models.describe(backends)
    described_backbones = models.describe_backbones(backbone_backends, source)
    metadata = {
        "version": __version__,
        "schema_version": load_schema("segments")["version"],
        "settings": {**asdict(segments), "languages": list(asked), "chunk_s": chunk_s,
                     "language_id": source.name, "speakers": speakers},
        "models": described,
        "backbones": described_backbones,
        "speech_detector": detector_description(detector),
    }
    if detector == "silero":
        metadata["speech_detector"]["second_stage"] = head.describe() if head else None
    metadata["fingerprint"] = fingerprint(metadata)
    return RunPlan(
        segments=segments,
        language=source,
        backends=tuple((m["hash"], m["backend"]) for m in described),
        backbone_backends=tuple((b["name"], b["hash"], b["backend"])
                                for b in described_backbones),
        batch_size=batch_size,
        chunk_s=chunk_s,
        speakers=speakers,
        speech_head=head,
        metadata=metadata,
    )


def second_stage(models: ModelSet) -> SpeechHead | None:
    """The bundled speech head, where the run encodes the states it reads (else None).

    The head reads one hidden state of one backbone; a model set without that
    backbone, or whose heads do not read that state, runs Silero VAD alone.
    """
    head = bundled_speech_head()
    if head is None or head.backbone not in models.backbones:
        return None
    if models.backbones[head.backbone].pooled_width != head.width:
        return None
    return head if head.layer in models.backbone_layers(head.backbone) else None


def fingerprint(metadata: dict) -> str:
    """The fingerprint of a run's metadata: what changes the table, nothing else."""
    relevant = {
        "version": metadata["version"],
        "settings": metadata["settings"],
        "models": [m["hash"] for m in metadata["models"]],
        "routes": [m["routed_for"] for m in metadata["models"]],
        # LiteRT and Keras agree to about 1e-6, not to the bit.
        "backends": [m["backend"] for m in metadata["models"]],
        # Heads read their backbone's features: its bytes and backend label too.
        "backbones": [(b["hash"], b["backend"]) for b in metadata.get("backbones", [])],
        # Which segments are speech: the detector's weights.
        "speech_detector": metadata.get("speech_detector"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
