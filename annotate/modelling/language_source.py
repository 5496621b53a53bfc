"""Where a run's language probabilities come from: the head, the cascade or Whisper.

Each source is an object that owns its branches, so that the annotator,
``annotate evaluate`` and the app ask it instead of testing a name:

- :class:`HeadLanguage`: the language model (a head on the backbone's states);
- :class:`CascadeLanguage`: the head, and where it is unsure (its top
  probability below the model's ``cascade.threshold``) the head fused with
  Whisper's own language identification
  (:func:`annotate.modelling.posteriors.fuse_language`);
- :class:`WhisperLanguage`: Whisper's language identification alone, for
  candidates beyond the head's languages (any of Whisper's 99 codes).

The cascade and Whisper alone both ask Whisper once more, with its own
context (the stretch's speech joined into one padded window), for a stretch
of a recording that stays unsure (:meth:`LanguageSource.with_context`); each
source keeps its own :class:`ContextStep` (when to ask, the answer's weight
and the window's length).

A source holds data only (the candidates and the table's columns), so it
travels with a run's plan to a cluster's workers; the models it reads are
passed to its methods. :func:`choose_language_source` applies
:meth:`ModelSet.choose_language_id`'s rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np

from annotate.features import WHISPER_CONTEXT_FRAMES, whisper_context
from annotate.labels import WHISPER_LANGUAGES
from annotate.modelling.backbone_folder import LanguageExport
from annotate.modelling.model_folder import ModelSpec
from annotate.modelling.model_set import ModelSet
from annotate.modelling.posteriors import (
    fuse_language,
    language_stretches,
    recording_mean,
    smooth_language,
    softmax,
)


@dataclass(frozen=True)
class LanguageSource:
    """A run's language source (use a subclass).

    Attributes:
        candidates: The languages a segment may be in; probabilities are
            renormalised over them. One candidate means the language is known.
        columns: The table's ``lang_<code>`` columns, in order.
    """

    candidates: tuple[str, ...]
    columns: tuple[str, ...]

    #: The name ``--language-id`` gives it, recorded in the metadata.
    name: ClassVar[str] = ""
    #: The backbone continues each pass to Whisper's language step (on every
    #: segment, or on those :meth:`unsure` picks).
    asks_whisper: ClassVar[bool] = False
    #: Whisper's step runs on a few segments only: the backbone's lanes share
    #: one language interpreter instead of holding one each.
    asks_some: ClassVar[bool] = False
    #: The language head's logits are read.
    reads_head: ClassVar[bool] = True

    @property
    def known(self) -> bool:
        """One candidate: every speech segment is in that language."""
        return len(self.candidates) == 1

    @property
    def candidate_mask(self) -> np.ndarray:
        """Which of :attr:`columns` are candidates [shape=(n_columns,), bool]."""
        return np.array([code in self.candidates for code in self.columns])

    def head_probs(self, logits: np.ndarray, language: ModelSpec) -> np.ndarray:
        """The head's calibrated probabilities, renormalised over the candidates."""
        logits = np.array(logits, dtype=np.float64)
        if not len(logits):
            return logits.reshape(0, len(self.columns))
        logits[:, ~self.candidate_mask] = -np.inf  # excluded languages get no probability
        return softmax(logits, language.temperature)

    def whisper_probs(self, whisper_logits: np.ndarray, temperature: float) -> np.ndarray:
        """Whisper's calibrated scores of the columns' tokens, renormalised over the candidates.

        Args:
            whisper_logits: np.ndarray [shape=(n, 99)], Whisper's language logits.
            temperature: Whisper's language temperature (its backbone's ``language``).
        """
        tokens = np.array([WHISPER_LANGUAGES.index(code) for code in self.columns])
        logits = np.asarray(whisper_logits)[:, tokens].astype(np.float64)
        if not len(logits):
            return logits
        logits[:, ~self.candidate_mask] = -np.inf
        return softmax(logits, temperature)

    def unsure(self, head_probs: np.ndarray, language: ModelSpec) -> np.ndarray:
        """Which segments go on to Whisper's language step [shape=(n,), bool]."""
        return np.zeros(len(head_probs), bool)

    def segment_probs(self, head_logits: np.ndarray | None, whisper_logits: np.ndarray | None,
                      language: ModelSpec, whisper_temperature: float | None) -> np.ndarray:
        """Each speech segment's language probabilities, before the smoothing.

        Args:
            head_logits: The language head's logits [shape=(n, n_labels)]
                (None where the source does not read the head).
            whisper_logits: Whisper's language logits [shape=(n, 99)], NaN on
                the rows Whisper was not asked for (None where it never is).
            language: The language model.
            whisper_temperature: Whisper's language temperature.

        Returns:
            np.ndarray [shape=(n, len(columns)), float64].
        """
        raise NotImplementedError

    def combine(self, head: np.ndarray | None, whisper: np.ndarray | None, language: ModelSpec,
                asked: np.ndarray | None = None) -> np.ndarray:
        """Each segment's language probabilities from the head's and Whisper's.

        The one place a source's branches meet: the annotator calls it from
        :meth:`segment_probs`, ``annotate evaluate`` on held-out recordings.

        Args:
            head: The head's probabilities [shape=(n, k)] (:meth:`head_probs`).
            whisper: Whisper's [shape=(n, k)] (:meth:`whisper_probs`), read
                only on the rows Whisper was asked for.
            language: The language model.
            asked: Which rows Whisper was asked for (default: :meth:`unsure`).
        """
        raise NotImplementedError

    def smoothed(self, language: ModelSpec) -> bool:
        """Whether the probabilities are smoothed along each recording."""
        return language.switch_probability is not None and not self.known

    def context_step(self, language: ModelSpec, whisper: LanguageExport | None
                     ) -> ContextStep | None:
        """When unsure stretches get Whisper's context, and on what window (None: never).

        Args:
            language: The language model (the cascade's settings).
            whisper: Whisper's language export (its own settings, for
                :class:`WhisperLanguage`), None without one.
        """
        return None

    def context_units(self, probs: np.ndarray, durations: np.ndarray, frames: np.ndarray,
                      language: ModelSpec, step: ContextStep,
                      max_frames: int) -> list[np.ndarray]:
        """The stretches of one recording that Whisper's context is asked for.

        A stretch is a run of segments of one language after the smoothing, so
        a real switch inside a long recording keeps its two sides apart (cut
        at ``max_frames`` of speech); it is asked when its duration-weighted
        top probability is below ``step.threshold``.

        Args:
            probs: The recording's segment probabilities [shape=(n, k)]
                (:meth:`segment_probs`).
            durations: Each segment's seconds [shape=(n,)].
            frames: Each segment's log-mel frames [shape=(n,)].
            language: The language model (its smoothing).
            step: When to ask (:meth:`context_step`).
            max_frames: The context window's length in frames.

        Returns:
            The segment indices of each stretch asked for.
        """
        if not len(probs):
            return []
        smoothed = (smooth_language(probs, language.switch_probability, self.candidate_mask)
                    if self.smoothed(language) else probs)
        stretches = language_stretches(smoothed.argmax(axis=1), frames, max_frames)
        return [s for s in stretches
                if recording_mean(probs[s], durations[s]).max() < step.threshold]

    def with_context(self, recordings: Sequence[ContextInput],
                     ask: Callable[[list[np.ndarray]], np.ndarray],
                     language: ModelSpec, step: ContextStep,
                     temperature: float) -> list[np.ndarray]:
        """Recordings' segment probabilities, their unsure stretches fused with Whisper's context.

        Each stretch :meth:`context_units` picks is joined into one padded
        window (:func:`annotate.features.whisper_context`; 30 s unless
        ``step.window_frames`` says less) and put to Whisper
        once; each of its segments' probabilities become
        ``softmax(log p + step.weight * log p_context)``. The windows of
        all the recordings go to ``ask`` :data:`CONTEXT_WINDOWS_A_CALL` at a
        time, so a backbone can share them out among its lanes while no
        more than those are held. The annotator and ``annotate evaluate``
        both label through here.

        Args:
            recordings: Each recording's segment probabilities
                (:meth:`segment_probs`), seconds and log-mel frames, and its
                segments' log-mels (:class:`ContextInput`).
            ask: Whisper's language logits [shape=(m, 99)] for m windows.
            language: The language model (its smoothing).
            step: When to ask, and the answer's weight (:meth:`context_step`).
            temperature: Whisper's language temperature.

        Returns:
            Each recording's probabilities [shape=(n, k)].
        """
        out = [np.array(r.probs, dtype=np.float64) for r in recordings]
        asked = [(r, unit) for r, rec in enumerate(recordings)
                 for unit in self.context_units(rec.probs, rec.durations, rec.frames, language,
                                                step, step.window_frames)]
        for first in range(0, len(asked), CONTEXT_WINDOWS_A_CALL):
            group = asked[first : first + CONTEXT_WINDOWS_A_CALL]
            logits = ask([whisper_context([recordings[r].segment(i) for i in unit],
                                          step.window_frames) for r, unit in group])
            context = self.whisper_probs(np.asarray(logits), temperature)
            for (r, unit), p in zip(group, context, strict=True):
                out[r][unit] = fuse_language(out[r][unit], np.repeat(p[None], len(unit), axis=0),
                                             1.0, step.weight)
        return out


@dataclass(frozen=True)
class HeadLanguage(LanguageSource):
    """The language model alone."""

    name: ClassVar[str] = "head"

    def segment_probs(self, head_logits, whisper_logits, language, whisper_temperature):
        return self.combine(self.head_probs(head_logits, language), None, language)

    def combine(self, head, whisper, language, asked=None):
        return np.asarray(head, np.float64)


@dataclass(frozen=True)
class CascadeLanguage(HeadLanguage):
    """The head, fused with Whisper's language identification where the head is unsure."""

    name: ClassVar[str] = "cascade"
    asks_whisper: ClassVar[bool] = True
    asks_some: ClassVar[bool] = True

    def unsure(self, head_probs: np.ndarray, language: ModelSpec) -> np.ndarray:
        return np.asarray(head_probs).max(axis=1) < language.cascade.threshold

    def segment_probs(self, head_logits, whisper_logits, language, whisper_temperature):
        probs = self.head_probs(head_logits, language)
        if not len(probs):
            return probs
        asked = ~np.isnan(whisper_logits[:, 0])  # the lanes asked where the head was unsure
        whisper = np.full_like(probs, np.nan)
        if asked.any():
            whisper[asked] = self.whisper_probs(whisper_logits[asked], whisper_temperature)
        return self.combine(probs, whisper, language, asked)

    def combine(self, head, whisper, language, asked=None):
        out = np.array(head, dtype=np.float64)
        asked = self.unsure(out, language) if asked is None else np.asarray(asked, bool)
        if asked.any():
            cascade = language.cascade
            out[asked] = fuse_language(out[asked], np.asarray(whisper)[asked],
                                       cascade.head_weight, cascade.whisper_weight)
        return out

    def context_step(self, language: ModelSpec, whisper: LanguageExport | None
                     ) -> ContextStep | None:
        cascade = language.cascade
        if self.known or cascade is None or cascade.context_threshold is None:
            return None
        return ContextStep(cascade.context_threshold, cascade.context_weight,
                           cascade.context_window_frames)


#: Context windows put to Whisper in one call: enough for every lane of a
#: backbone, few enough to hold (about 1 MB a window).
CONTEXT_WINDOWS_A_CALL = 8


@dataclass(frozen=True)
class ContextStep:
    """When a stretch is asked with Whisper's context, and how its answer is fused.

    Attributes:
        threshold: A stretch whose duration-weighted top probability is below
            it is asked.
        weight: The weight of the context's log-probabilities:
            ``softmax(log p + weight * log p_context)``.
        window_frames: The window's length in log-mel frames (Whisper's 30 s
            by default); a stretch ends where its speech fills the window.
    """

    threshold: float
    weight: float
    window_frames: int = WHISPER_CONTEXT_FRAMES


@dataclass(frozen=True)
class ContextInput:
    """One recording, as :meth:`LanguageSource.with_context` reads it.

    Attributes:
        probs: Its segment probabilities [shape=(n, k)].
        durations: Each segment's seconds [shape=(n,)].
        frames: Each segment's log-mel frames [shape=(n,)].
        segment: The ``i``-th segment's normalised log-mel at its real
            length [shape=(frames[i], n_mels)], read when a stretch is asked.
    """

    probs: np.ndarray
    durations: np.ndarray
    frames: np.ndarray
    segment: Callable[[int], np.ndarray]


@dataclass(frozen=True)
class WhisperLanguage(LanguageSource):
    """Whisper's language identification alone: any of its 99 codes."""

    name: ClassVar[str] = "whisper"
    asks_whisper: ClassVar[bool] = True
    reads_head: ClassVar[bool] = False

    def segment_probs(self, head_logits, whisper_logits, language, whisper_temperature):
        return self.combine(None, self.whisper_probs(whisper_logits, whisper_temperature),
                            language)

    def combine(self, head, whisper, language, asked=None):
        return np.asarray(whisper, np.float64)

    def context_step(self, language: ModelSpec, whisper: LanguageExport | None
                     ) -> ContextStep | None:
        if self.known or whisper is None or whisper.context_threshold is None:
            return None
        return ContextStep(whisper.context_threshold, whisper.context_weight,
                           whisper.context_window_frames)


SOURCES: dict[str, type[LanguageSource]] = {
    cls.name: cls for cls in (HeadLanguage, CascadeLanguage, WhisperLanguage)}


def choose_language_source(models: ModelSet, languages: Sequence[str] | None = None,
                           requested: str = "auto") -> LanguageSource:
    """The language source of a run with ``models`` (:meth:`ModelSet.choose_language_id`).

    Raises:
        UsageError: An unknown choice or code, or codes neither source knows.
    """
    name, candidates = models.choose_language_id(languages, requested)
    columns = candidates if name == "whisper" else models.language.labels
    return SOURCES[name](tuple(candidates), tuple(columns))
