"""From segment features to labelled rows: language, routing, emotion.

Each speech segment's emotion model is picked by its language after the
smoothing along the recording (or by the one language the user gave): a
run of segments in one language (a stretch) is labelled by that language's
emotion model, so a recording that switches from English to German gets
the English model for its English stretch and the German one for the
rest, and a recording in one language gets one model, as before. The
segments' language probabilities come from the language model (a head on
the backbone), fused with Whisper's own language identification where the
head is unsure (the cascade), or from Whisper's alone when the candidates
go beyond the head's languages: the plan's language source
(:mod:`annotate.modelling.language_source`) owns those branches.

The segments Silero VAD was unsure of are encoded with the speech segments,
and the speech head on the backbone's states (the detector's second stage,
:mod:`annotate.modelling.speech_head`) decides them first: those it finds
speech are labelled like the others, the rest are not.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from annotate.features import FeatureParams
from annotate.labels import EMOTIONS
from annotate.modelling.inference import Classifier
from annotate.modelling.language_source import ContextInput, ContextStep
from annotate.modelling.model_set import ModelSet
from annotate.modelling.posteriors import smooth_language
from annotate.pipeline.plan import RunPlan
from annotate.prepare.featurize import RecordingFeatures

if TYPE_CHECKING:
    from annotate.backbone.runtime import Backbone


class Annotator:
    """Applies a run's models to recordings, as its plan says, and returns rows of its schema.

    Args:
        plan: The run's plan (:func:`annotate.pipeline.plan.plan_run`): the
            language source and candidates, and the backend of every model
            and backbone, found by content hash.
        models: The run's models: those the plan was made from, or copies
            of their folders (a cluster's worker).

    Heads on a backbone share its pass: each speech segment is encoded once
    per annotate call, and every head reads its pooled hidden states.
    Whisper's language identification continues the same pass.
    """

    def __init__(self, plan: RunPlan, models: ModelSet) -> None:
        self.plan = plan
        self.models = models.with_window(plan.segments.window_s)
        self.language = plan.language
        self.schema = plan.schema
        self._backend_of = {id(s): plan.backend_of(s.folder) for s in self.models.specs}
        self._backbone_backends = {name: plan.backbone_backend_of(name, spec.folder)
                                   for name, spec in self.models.backbones.items()}
        self._backbones: dict[str, Backbone] = {}
        self._head_lock = threading.Lock()
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
                self._backbone_backends[name], reader.features.n_frames,
                language=self.models.identifies_language(name, self.language),
                share_language=self.language.asks_some).load()
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
        recordings, encoded, whisper_logits = self._second_stage(recordings, encoded,
                                                                 whisper_logits)
        language_probs = self._language_probs(recordings, encoded, whisper_logits)
        routes = [self._routes(p) for p in language_probs]
        emotion_probs = self._emotion_probs(recordings, routes, encoded)
        columns = {name: [] for name in self.schema.names}
        for recording, lang_p, route, emo_p in zip(recordings, language_probs, routes,
                                                   emotion_probs, strict=True):
            self._append_rows(columns, recording, lang_p, route, emo_p)
        return pa.table(
            {name: pa.array(values, type=self.schema.field(name).type)
             for name, values in columns.items()},
            schema=self.schema,
        )

    def _encode(self, recordings: list[RecordingFeatures]):
        """Per backbone, each recording's pooled hidden states [shape=(n_encoded, layers, width)].

        Also returns Whisper's language logits of every encoded segment
        [shape=(n_encoded_total, 99)] (NaN rows where it was not asked), or
        None when the run does not use them.
        """
        encoded, whisper_logits = {}, None
        for name in self.models.backbones:
            reader = next(s for s in self.models.specs
                          if s.backbone is not None and s.backbone.name == name)
            params = reader.features
            stacks = [a for r in recordings for a in r.features[params]]
            frames = np.concatenate(
                [_encoded_frames(r, params) for r in recordings]) if recordings else np.zeros(0)
            checked = np.concatenate([np.zeros(0, bool)] + [
                r.unsure[r.encoded] if r.unsure is not None else np.zeros(r.encoded.sum(), bool)
                for r in recordings])
            asks = (partial(self._asks_whisper, name, checked) if self.language.asks_some
                    and self.models.identifies_language(name, self.language) else None)
            pooled, logits = self.backbone(name).encode(stacks, frames, asks)
            encoded[name] = _split(pooled, [r.encoded.sum() for r in recordings])
            if logits is not None:
                whisper_logits = logits
        return encoded, whisper_logits

    def _second_stage(self, recordings: list[RecordingFeatures], encoded, whisper_logits):
        """The recordings once the speech head has decided their unsure segments.

        Returns the recordings, and the encoded states and Whisper's logits
        of their speech segments only.
        """
        head = self.plan.speech_head
        if head is None or not any(r.unsure is not None and r.unsure.any() for r in recordings):
            return recordings, encoded, whisper_logits
        order = self.models.backbone_layers(head.backbone)
        decided = []
        for r, pooled in zip(recordings, encoded[head.backbone], strict=True):
            probability = np.zeros(len(r.bounds))
            held = np.flatnonzero(r.encoded)
            probability[held] = head.probability(pooled[:, order.index(head.layer)])
            decided.append(r.with_second_stage(probability >= head.threshold, probability))
        kept = [d.speech[r.encoded] for r, d in zip(recordings, decided, strict=True)]
        encoded = {name: [states[k] for states, k in zip(per, kept, strict=True)]
                   for name, per in encoded.items()}
        if whisper_logits is not None:
            whisper_logits = whisper_logits[np.concatenate(kept)]
        return decided, encoded, whisper_logits

    def _inputs(self, spec, members: list[RecordingFeatures], encoded) -> list:
        """What ``spec``'s network reads for the speech segments of ``members``."""
        if spec.backbone is None:
            return [a for r in members for a in r.speech_features(spec.features)]
        return [self._head_rows(spec, a) for a in encoded[spec.backbone.name]]

    def _head_rows(self, spec, pooled: np.ndarray) -> np.ndarray:
        """A head's input from its backbone's pooled states [shape=(n, layers run, width)]."""
        order = self.models.backbone_layers(spec.backbone.name)
        keep = [order.index(layer) for layer in spec.backbone.layers]
        return pooled[:, keep].reshape(len(pooled), spec.backbone.input_size)

    def _asks_whisper(self, name: str, checked: np.ndarray, pooled: np.ndarray,
                      first: int) -> np.ndarray:
        """Which segments (pooled states, from a backbone lane) go on to Whisper's step.

        Those the language head is unsure of, but not the segments the speech
        head will find hold no speech (``checked``: the rows it decides).
        """
        spec = self.models.language
        with self._head_lock:  # the lanes ask from their threads; a classifier is not shared
            logits = self.classifier(spec).logits(self._head_rows(spec, pooled))
        asks = self.language.unsure(self.language.head_probs(logits, spec), spec)
        mine = checked[first : first + len(pooled)]
        head = self.plan.speech_head
        if head is not None and head.backbone == name and mine.any():
            layer = self.models.backbone_layers(name).index(head.layer)
            asks &= ~mine | (head.probability(pooled[:, layer]) >= head.threshold)
        return asks

    def _language_probs(self, recordings: list[RecordingFeatures], encoded,
                        whisper_logits: np.ndarray | None) -> list[np.ndarray]:
        spec = self.models.language
        head_logits = (self.classifier(spec).logits(self._inputs(spec, recordings, encoded))
                       if self.language.reads_head else None)
        whisper = self.models.whisper_language
        probs = self.language.segment_probs(
            head_logits, whisper_logits, spec,
            whisper.language.temperature if whisper is not None else None)
        per_recording = _split(probs, [r.speech.sum() for r in recordings])
        step = self.language.context_step(spec, whisper.language if whisper is not None else None)
        if step is not None:
            per_recording = self._with_context(recordings, per_recording, step)
        if not self.language.smoothed(spec):
            return per_recording
        # Along each recording: a language rarely changes between neighbouring segments.
        candidates = self.language.candidate_mask
        return [smooth_language(p, spec.switch_probability, candidates) for p in per_recording]

    def _with_context(self, recordings: list[RecordingFeatures], per_recording: list[np.ndarray],
                      step: ContextStep) -> list[np.ndarray]:
        """The recordings' segment probabilities, unsure stretches given Whisper's context."""
        spec, whisper = self.models.language, self.models.whisper_language
        inputs = []
        for recording, probs in zip(recordings, per_recording, strict=True):
            bounds = recording.bounds[recording.speech]
            durations = bounds[:, 1] - bounds[:, 0]
            frames = spec.features.segment_frames(durations)
            inputs.append(ContextInput(probs, durations, frames,
                                       _speech_segment(recording, spec.features, frames)))
        return self.language.with_context(
            inputs, self.backbone(whisper.name).context_languages, spec, step,
            whisper.language.temperature)

    def _routes(self, probs: np.ndarray) -> list:
        """The emotion model of each speech segment of a recording (None: no model).

        A segment goes to the model of its language after the smoothing, so
        each stretch of one language gets that language's model.
        """
        if self.language.known:
            return [self.models.emotion_for(self.language.candidates[0])] * len(probs)
        best = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, int)
        return [self.models.emotion_for(self.language.columns[int(j)]) for j in best]

    def _emotion_probs(self, recordings, routes, encoded) -> list[list]:
        """Each speech segment's emotion probabilities over its model's labels (None: no model)."""
        out: list[list] = [[None] * len(route) for route in routes]
        for spec in {id(s): s for route in routes for s in route if s is not None}.values():
            inputs, where = [], []
            for i, route in enumerate(routes):
                chosen = np.array([s is spec for s in route], bool)
                if chosen.any():
                    inputs += self._segment_inputs(spec, recordings[i], encoded, i, chosen)
                    where.append((i, np.flatnonzero(chosen)))
            probs = self.classifier(spec).predict(inputs)
            parts = _split(probs, [len(rows) for _, rows in where])
            for (i, rows), part in zip(where, parts, strict=True):
                for j, row in zip(rows, part, strict=True):
                    out[i][j] = row
        return out

    def _segment_inputs(self, spec, recording: RecordingFeatures, encoded, index: int,
                        chosen: np.ndarray) -> list[np.ndarray]:
        """What ``spec``'s network reads for the ``chosen`` speech segments of a recording."""
        if spec.backbone is not None:
            return [self._head_rows(spec, encoded[spec.backbone.name][index][chosen])]
        stacks = recording.speech_features(spec.features)
        if chosen.all():  # the whole recording: stacks spilled to disk are read in turn
            return list(stacks)
        return [np.concatenate([np.asarray(a) for a in stacks])[chosen]]

    def _append_rows(self, columns, recording, lang_p, route, emo_p) -> None:
        n = len(recording.bounds)
        candidates = self.language.candidate_mask
        speech_index = np.cumsum(recording.speech) - 1
        places = {id(spec): [spec.labels.index(x) if x in spec.labels else None for x in EMOTIONS]
                  for spec in route if spec is not None}
        for i in range(n):
            columns["path"].append(recording.key)
            columns["start_s"].append(float(recording.bounds[i, 0]))
            columns["end_s"].append(float(recording.bounds[i, 1]))
            speech = bool(recording.speech[i])
            columns["speech"].append(speech)
            columns["speech_p"].append(_probability(recording.speech_p, i))
            columns["speech_s"].append(
                float(recording.speech_s[i]) if recording.speech_s is not None
                else float(recording.bounds[i, 1] - recording.bounds[i, 0]) * speech)
            if speech:
                p = lang_p[speech_index[i]]
                best = int(np.argmax(p))
                columns["lang"].append(self.language.columns[best])
                columns["lang_p"].append(float(p[best]))
                for j, code in enumerate(self.language.columns):
                    columns[f"lang_{code}"].append(float(p[j]) if candidates[j] else None)
            else:
                for name in ("lang", "lang_p", *(f"lang_{c}" for c in self.language.columns)):
                    columns[name].append(None)
            spec = route[speech_index[i]] if speech else None
            if spec is not None:
                e = emo_p[speech_index[i]]
                best = int(np.argmax(e))
                columns["emotion"].append(spec.labels[best])
                columns["emotion_p"].append(float(e[best]))
                for label, j in zip(EMOTIONS, places[id(spec)], strict=True):
                    columns[f"emo_{label}"].append(float(e[j]) if j is not None else None)
                columns["emotion_model"].append(spec.name)
            else:
                for name in ("emotion", "emotion_p", "emotion_model", *(f"emo_{x}" for x in EMOTIONS)):
                    columns[name].append(None)


def _probability(values: np.ndarray | None, i: int) -> float | None:
    """``values[i]``, or None where it is missing or NaN."""
    if values is None or np.isnan(values[i]):
        return None
    return float(values[i])


def _encoded_frames(recording: RecordingFeatures, params: FeatureParams) -> np.ndarray:
    """Log-mel frames of each encoded segment at its real length."""
    bounds = recording.bounds[recording.encoded]
    return params.segment_frames(bounds[:, 1] - bounds[:, 0])


def _speech_segment(recording: RecordingFeatures, params: FeatureParams, frames: np.ndarray):
    """The ``i``-th speech segment's log-mel at its real length, the stacks read on first use.

    A spilled stack is read from disk only when a stretch of its recording is asked.
    """
    rows: list[np.ndarray] = []
    held = recording.speech_rows()

    def segment(i: int) -> np.ndarray:
        if not rows:
            rows.extend(a for stack in recording.features[params] for a in np.asarray(stack))
        return rows[held[i]][: frames[i]]

    return segment


def _split(rows: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    return np.split(rows, np.cumsum(counts)[:-1]) if counts else []
