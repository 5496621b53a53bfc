"""From segment features to labelled rows: language, routing, emotion.

The language of a recording is the duration-weighted mean of its speech
segments' language probabilities (or the one language given by the user);
it picks the emotion model for every segment of that recording. The
segments' language probabilities come from the language model (a head on
the backbone), fused with Whisper's own language identification where the
head is unsure (the cascade), or from Whisper's alone when the candidates
go beyond the head's languages (:meth:`ModelSet.choose_language_id`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from annotate.audio.discover import Failure
from annotate.features import FeatureParams
from annotate.labels import EMOTIONS, WHISPER_LANGUAGES
from annotate.modelling.inference import Classifier
from annotate.modelling.model_set import ModelSet
from annotate.modelling.posteriors import fuse_language, smooth_language, softmax
from annotate.schema import segments_schema

if TYPE_CHECKING:
    from annotate.backbone.runtime import Backbone


@dataclass
class RecordingFeatures:
    """A whole recording, ready for inference.

    Attributes:
        key: The ``path`` of the output.
        bounds: np.ndarray [shape=(n, 2), float64] segment start/end in seconds.
        speech: np.ndarray [shape=(n,), bool].
        features: Per feature setting, the speech segments' features as one
            array per chunk, each [shape=(n_chunk_speech, frames, n_mels)]
            (kept apart: joining a long recording's chunks would copy them).
    """

    key: str
    bounds: np.ndarray
    speech: np.ndarray
    features: dict[FeatureParams, list[np.ndarray]]

    @property
    def duration_s(self) -> float:
        return float(self.bounds[-1, 1]) if len(self.bounds) else 0.0


def assemble_recording(chunks: list) -> RecordingFeatures | Failure:
    """Join a recording's chunk results (``featurize.ChunkResult``), or return its first failure."""
    for chunk in chunks:
        if chunk.failure is not None:
            return chunk.failure
    first = chunks[0]
    return RecordingFeatures(
        first.recording.key,
        np.concatenate([c.bounds for c in chunks]),
        np.concatenate([c.speech for c in chunks]),
        {p: [c.features[p] for c in chunks] for p in first.features},
    )


class Annotator:
    """Applies a :class:`ModelSet` to recordings and returns rows of the output schema.

    Args:
        models: The models of the run.
        languages: Candidate languages (a subset of the language model's
            labels); probabilities are renormalised over them. One language
            means the language is known.
        backends: The backend of each model of ``models.specs`` (default:
            :meth:`ModelSet.choose_backends` under ``$ANNOTATE_BACKEND``).
        backbone_backends: The backend of each backbone by name (default:
            :meth:`ModelSet.choose_backbone_backends` under ``$ANNOTATE_BACKEND``).
        language_id: ``"head"`` (the language model), ``"whisper"`` (the
            backbone's language identification: any of Whisper's codes), or
            ``"cascade"``: the head, and where it is unsure (the language
            model's ``cascade``) the fusion of the head and Whisper's.

    Heads on a backbone share its pass: each speech segment is encoded once
    per annotate call, and every head reads its pooled hidden states.
    Whisper's language identification continues the same pass.

    The table has a ``lang_<code>`` column for each of the language model's
    labels (null for those that are not candidates), or, with Whisper, for
    each candidate.
    """

    def __init__(self, models: ModelSet, languages: tuple[str, ...] | None = None,
                 backends: Sequence[str] | None = None,
                 backbone_backends: dict[str, str] | None = None,
                 language_id: str = "head") -> None:
        self.models = models
        self.language_id = language_id
        self.backends = tuple(backends) if backends else models.choose_backends()
        self.backbone_backends = (dict(backbone_backends) if backbone_backends is not None
                                  else models.choose_backbone_backends(language_id=language_id))
        self._backend_of = {id(s): b for s, b in zip(models.specs, self.backends, strict=True)}
        self._backbones: dict[str, Backbone] = {}
        self.languages = tuple(languages) if languages else models.language.labels
        self.all_languages = self.languages if language_id == "whisper" else models.language.labels
        self._whisper_tokens = None
        if language_id in ("whisper", "cascade"):
            self._whisper_tokens = np.array([WHISPER_LANGUAGES.index(c)
                                             for c in self.all_languages])
        self.candidates = np.array([code in self.languages for code in self.all_languages])
        self._head_lock = threading.Lock()
        self.schema = segments_schema(self.all_languages)
        self._classifiers: dict[int, Classifier] = {}

    def classifier(self, spec) -> Classifier:
        if id(spec) not in self._classifiers:
            self._classifiers[id(spec)] = Classifier(spec, self._backend_of[id(spec)]).load()
        return self._classifiers[id(spec)]

    def backbone(self, name: str) -> Backbone:
        if name not in self._backbones:
            from annotate.backbone.runtime import Backbone

            reader = next(s for s in self.models.specs
                          if s.backbone is not None and s.backbone.name == name)
            self._backbones[name] = Backbone(
                self.models.backbones[name], self.models.backbone_layers(name),
                self.backbone_backends[name], reader.features.n_frames,
                language=self.models.identifies_language(name, self.language_id),
                # The cascade asks for the language step on a few segments: the lanes share it.
                share_language=self.language_id == "cascade").load()
        return self._backbones[name]

    def load(self) -> Annotator:
        """Load every model now, so that a broken model fails before any work."""
        for name in self.models.backbones:
            self.backbone(name)
        for spec in self.models.specs:
            self.classifier(spec)
        return self

    def annotate(self, recordings: list[RecordingFeatures]) -> pa.Table:
        """Label every segment of ``recordings`` (one inference call per model)."""
        encoded, whisper_logits = self._encode(recordings)
        language_probs = self._language_probs(recordings, encoded, whisper_logits)
        routed = [self.models.emotion_for(self._recording_language(r, p))
                  for r, p in zip(recordings, language_probs)]
        emotion_probs = self._emotion_probs(recordings, routed, encoded)
        columns = {name: [] for name in self.schema.names}
        for recording, lang_p, spec, emo_p in zip(recordings, language_probs, routed, emotion_probs):
            self._append_rows(columns, recording, lang_p, spec, emo_p)
        return pa.table(
            {name: pa.array(values, type=self.schema.field(name).type)
             for name, values in columns.items()},
            schema=self.schema,
        )

    def _encode(self, recordings: list[RecordingFeatures]):
        """Per backbone, each recording's pooled hidden states [shape=(n_speech, layers, width)].

        Also returns Whisper's language logits of every speech segment
        [shape=(n_speech_total, 99)], or None when the run does not use them.
        """
        encoded, whisper_logits = {}, None
        for name in self.models.backbones:
            reader = next(s for s in self.models.specs
                          if s.backbone is not None and s.backbone.name == name)
            params = reader.features
            stacks = [a for r in recordings for a in r.features[params]]
            frames = np.concatenate(
                [_speech_frames(r, params) for r in recordings]) if recordings else np.zeros(0)
            unsure = (self._head_unsure if self.language_id == "cascade"
                      and self.models.identifies_language(name, self.language_id) else None)
            pooled, logits = self.backbone(name).encode(stacks, frames, unsure)
            encoded[name] = _split(pooled, [r.speech.sum() for r in recordings])
            if logits is not None:
                whisper_logits = logits
        return encoded, whisper_logits

    def _inputs(self, spec, members: list[RecordingFeatures], encoded, indices=None) -> list:
        """What ``spec``'s network reads for the speech segments of ``members``."""
        if spec.backbone is None:
            return [a for r in members for a in r.features[spec.features]]
        per_recording = encoded[spec.backbone.name]
        chosen = per_recording if indices is None else [per_recording[i] for i in indices]
        return [self._head_rows(spec, a) for a in chosen]

    def _head_rows(self, spec, pooled: np.ndarray) -> np.ndarray:
        """A head's input from its backbone's pooled states [shape=(n, layers run, width)]."""
        order = self.models.backbone_layers(spec.backbone.name)
        keep = [order.index(layer) for layer in spec.backbone.layers]
        return pooled[:, keep].reshape(len(pooled), spec.backbone.input_size)

    def _head_probs(self, logits: np.ndarray) -> np.ndarray:
        """The language head's calibrated probabilities, renormalised over the candidates."""
        logits = logits.astype(np.float64)
        # Excluded languages get no probability: a softmax over the candidates.
        logits[:, ~self.candidates] = -np.inf
        return softmax(logits, self.models.language.temperature) if len(logits) else logits

    def _whisper_probs(self, whisper_logits: np.ndarray) -> np.ndarray:
        """Whisper's calibrated scores of the candidates' tokens, renormalised over them."""
        logits = whisper_logits[:, self._whisper_tokens].astype(np.float64)
        logits[:, ~self.candidates] = -np.inf
        temperature = self.models.whisper_language.language.temperature
        return softmax(logits, temperature) if len(logits) else logits

    def _head_unsure(self, pooled: np.ndarray) -> np.ndarray:
        """Cascade: which segments (pooled states, from a backbone lane) go on to Whisper's step."""
        spec = self.models.language
        with self._head_lock:  # the lanes ask from their threads; a classifier is not shared
            logits = self.classifier(spec).logits(self._head_rows(spec, pooled))
        return self._head_probs(logits).max(axis=1) < spec.cascade.threshold

    def _language_probs(self, recordings: list[RecordingFeatures], encoded,
                        whisper_logits: np.ndarray | None) -> list[np.ndarray]:
        spec = self.models.language
        if self.language_id == "whisper":
            probs = self._whisper_probs(whisper_logits)
        else:
            probs = self._head_probs(self.classifier(spec).logits(
                self._inputs(spec, recordings, encoded)))
        if self.language_id == "cascade" and len(probs):
            # Where the head was unsure, the weighted product of its and Whisper's probabilities.
            asked = ~np.isnan(whisper_logits[:, 0])
            if asked.any():
                probs[asked] = fuse_language(probs[asked], self._whisper_probs(
                    whisper_logits[asked]), spec.cascade.head_weight, spec.cascade.whisper_weight)
        per_recording = _split(probs, [r.speech.sum() for r in recordings])
        if spec.switch_probability is None or len(self.languages) == 1:
            return per_recording
        # Along each recording: a language rarely changes between neighbouring segments.
        return [smooth_language(p, spec.switch_probability, self.candidates)
                for p in per_recording]

    def _recording_language(self, recording: RecordingFeatures, probs: np.ndarray) -> str | None:
        if not recording.speech.any():
            return None
        if len(self.languages) == 1:
            return self.languages[0]
        speech_bounds = recording.bounds[recording.speech]
        weights = speech_bounds[:, 1] - speech_bounds[:, 0]
        mean = (probs * weights[:, None]).sum(axis=0) / max(weights.sum(), 1e-9)
        return self.all_languages[int(np.argmax(mean))]

    def _emotion_probs(self, recordings, routed, encoded) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = [None] * len(recordings)
        for spec in {id(s): s for s in routed if s is not None}.values():
            members = [i for i, s in enumerate(routed) if s is spec]
            arrays = self._inputs(spec, [recordings[i] for i in members], encoded, members)
            probs = self.classifier(spec).predict(arrays)
            for i, part in zip(members, _split(probs, [recordings[i].speech.sum() for i in members])):
                out[i] = part
        return out

    def _append_rows(self, columns, recording, lang_p, spec, emo_p) -> None:
        n = len(recording.bounds)
        speech_index = np.cumsum(recording.speech) - 1
        emo_index = {label: j for j, label in enumerate(spec.labels)} if spec else {}
        for i in range(n):
            columns["path"].append(recording.key)
            columns["start_s"].append(float(recording.bounds[i, 0]))
            columns["end_s"].append(float(recording.bounds[i, 1]))
            speech = bool(recording.speech[i])
            columns["speech"].append(speech)
            if speech:
                p = lang_p[speech_index[i]]
                best = int(np.argmax(p))
                columns["lang"].append(self.all_languages[best])
                columns["lang_p"].append(float(p[best]))
                for j, code in enumerate(self.all_languages):
                    columns[f"lang_{code}"].append(float(p[j]) if self.candidates[j] else None)
            else:
                for name in ("lang", "lang_p", *(f"lang_{c}" for c in self.all_languages)):
                    columns[name].append(None)
            if speech and spec is not None:
                e = emo_p[speech_index[i]]
                best = int(np.argmax(e))
                columns["emotion"].append(spec.labels[best])
                columns["emotion_p"].append(float(e[best]))
                for label in EMOTIONS:
                    j = emo_index.get(label)
                    columns[f"emo_{label}"].append(float(e[j]) if j is not None else None)
                columns["emotion_model"].append(spec.name)
            else:
                for name in ("emotion", "emotion_p", "emotion_model", *(f"emo_{x}" for x in EMOTIONS)):
                    columns[name].append(None)


def _speech_frames(recording: RecordingFeatures, params: FeatureParams) -> np.ndarray:
    """Log-mel frames of each speech segment at its real length."""
    bounds = recording.bounds[recording.speech]
    return params.segment_frames(bounds[:, 1] - bounds[:, 0])


def _split(rows: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    return np.split(rows, np.cumsum(counts)[:-1]) if counts else []
