"""Which models a run applies: one language model, emotion models routed by language."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from annotate.errors import ModelError, UsageError, expected_one_of
from annotate.features import FeatureParams
from annotate.labels import WHISPER_LANGUAGES
from annotate.modelling.backbone_folder import BackboneSpec, backbone_of
from annotate.modelling.model_folder import (
    ModelSpec,
    bundled_models_dir,
    folder_hash,
    read_model_folder,
)

ANY_LANGUAGE = "*"
#: Where the language probabilities come from (``annotate run --language-id``):
#: ``head``, the language model; ``whisper``, the backbone's own language
#: identification (any of Whisper's 99 codes); ``auto``, the head when it
#: knows every candidate, else Whisper.
LANGUAGE_IDS = ("auto", "head", "cascade", "whisper")
#: The longest input of a Whisper encoder (its 1500 positions).
MAX_BACKBONE_SEGMENT_S = 30.0


@dataclass(frozen=True)
class ModelSet:
    """The models of a run.

    Attributes:
        language: The spoken-language model.
        emotion: Emotion models by the language they serve; ``"*"`` is the
            cross-lingual model used for every language without its own.
    """

    language: ModelSpec
    emotion: dict[str, ModelSpec]

    @classmethod
    def load(
        cls,
        language_model: str | Path | None = None,
        emotion_models: dict[str, str | Path] | None = None,
        bundled: str | Path | None = None,
    ) -> ModelSet:
        """Bundled models, with any folder given by the user replacing its counterpart.

        Args:
            language_model: A language model folder replacing the bundled one.
            emotion_models: ``{language: folder}`` replacing or adding emotion
                models; the key ``"*"`` sets the fallback model.
            bundled: The folder of bundled models (default: the package's).
        """
        bundled = Path(bundled) if bundled else bundled_models_dir()
        shipped = _bundled_specs(bundled)
        if language_model is not None:
            language = read_model_folder(language_model)
        elif "language" in shipped:
            language = shipped["language"][0]
        else:
            raise ModelError(
                f"no bundled language model in {bundled}; pass --language-model DIR "
                "(a folder written by `annotate train language`)"
            )
        if language.task != "language":
            raise ModelError(f"{language.folder} is a {language.task} model, not a language model")
        emotion: dict[str, ModelSpec] = {}
        for spec in shipped.get("emotion", []):
            for code in spec.languages:
                emotion.setdefault(code, spec)
        for code, folder in (emotion_models or {}).items():
            if code != ANY_LANGUAGE and not (len(code) == 2 and code.isalpha() and code.islower()):
                raise UsageError(
                    f"bad language {code!r} in --emotion-model, expected an ISO 639-1 code "
                    f"such as {', '.join(language.labels)} or '*' for the fallback"
                )
            spec = read_model_folder(folder)
            if spec.task != "emotion":
                raise ModelError(f"{spec.folder} is a {spec.task} model, not an emotion model")
            emotion[code] = spec
        models = cls(language, emotion)
        rates = {p.sampling_rate for p in models.feature_params}
        if len(rates) > 1:
            raise ModelError(f"the models expect different sampling rates {sorted(rates)}")
        return models

    @cached_property
    def backbones(self) -> dict[str, BackboneSpec]:
        """The backbone folders the heads read, by name (resolved once)."""
        found: dict[str, BackboneSpec] = {}
        for spec in self.specs:
            if spec.backbone is not None and spec.backbone.name not in found:
                found[spec.backbone.name] = backbone_of(spec)
        return found

    def backbone_layers(self, name: str) -> tuple[int, ...]:
        """The hidden states of backbone ``name`` that some head reads, in order."""
        return tuple(sorted({layer for spec in self.specs
                             if spec.backbone is not None and spec.backbone.name == name
                             for layer in spec.backbone.layers}))

    @property
    def whisper_language(self) -> BackboneSpec | None:
        """The language model's backbone, if it records Whisper's language identification."""
        if self.language.backbone is None:
            return None
        spec = self.backbones[self.language.backbone.name]
        return spec if spec.language is not None else None

    def choose_language_id(self, languages: Sequence[str] | None,
                           requested: str = "auto") -> tuple[str, tuple[str, ...]]:
        """Where the run's language probabilities come from, and its candidates.

        Args:
            languages: The candidates asked for (None: the language model's labels).
            requested: One of :data:`LANGUAGE_IDS`.

        ``auto`` takes the language head where it knows every candidate, with
        Whisper's language identification where the head is unsure
        (``cascade``) when the head records how (``model.json``'s
        ``cascade``) and its backbone has that step; Whisper's alone for
        candidates beyond the head's. One candidate needs no identification:
        the head, whose output is then certain.

        Returns:
            ``("head", "cascade" or "whisper", candidates)``.

        Raises:
            UsageError: An unknown choice or code, or codes neither source knows.
        """
        if requested not in LANGUAGE_IDS:
            raise UsageError(expected_one_of("language identification", requested, LANGUAGE_IDS))
        head = self.language.labels
        candidates = tuple(dict.fromkeys(languages)) if languages else head
        unknown = [code for code in candidates if code not in head]
        if requested in ("head", "cascade") and unknown:
            raise UsageError(expected_one_of("language", unknown[0], head)
                             + f" (--language-id {requested} uses the language head)")
        if requested == "cascade" and (self.language.cascade is None
                                       or self.whisper_language is None):
            raise UsageError(f"--language-id cascade: the language model {self.language.folder} "
                             "records no cascade, or its backbone has no language.tflite "
                             "(scripts/fit_language_cascade.py)")
        if requested == "cascade":
            return "cascade", candidates
        if requested == "head" or (requested == "auto" and not unknown):
            if (requested == "auto" and len(candidates) > 1 and self.language.cascade is not None
                    and self.whisper_language is not None):
                return "cascade", candidates
            return "head", candidates
        if self.whisper_language is None:
            why = (f"the language model {self.language.folder} reads no backbone with "
                   "Whisper's language identification (language.tflite)")
            if requested == "whisper":
                raise UsageError(f"--language-id whisper: {why}")
            raise UsageError(expected_one_of("language", unknown[0], head) + f"; {why}")
        for code in candidates:
            if code not in WHISPER_LANGUAGES:
                raise UsageError(f"bad language {code!r}: neither the language model "
                                 f"[{', '.join(sorted(head))}] nor Whisper "
                                 f"({len(WHISPER_LANGUAGES)} codes: {', '.join(WHISPER_LANGUAGES)}) "
                                 "knows it")
        return "whisper", candidates

    def with_window(self, window_s: float) -> ModelSet:
        """The same models, with backbone heads fed segments of up to ``window_s`` seconds.

        A pretrained encoder takes segments at their real length (up to its
        30 s), so its heads' features follow the run's window instead of
        the ``segment_s`` they were trained with.
        """
        def fitted(spec: ModelSpec) -> ModelSpec:
            if spec.backbone is None:
                return spec
            seconds = min(float(window_s), MAX_BACKBONE_SEGMENT_S)
            return dataclasses.replace(
                spec, features=dataclasses.replace(spec.features, segment_s=seconds))

        replaced = {id(s): fitted(s) for s in self.specs}
        return ModelSet(replaced[id(self.language)],
                        {code: replaced[id(s)] for code, s in self.emotion.items()})

    def emotion_for(self, language: str | None) -> ModelSpec | None:
        """The emotion model for a recording in ``language`` (None: no model)."""
        if language is None:
            return None
        return self.emotion.get(language) or self.emotion.get(ANY_LANGUAGE)

    @property
    def specs(self) -> list[ModelSpec]:
        """Every distinct model, language model first."""
        unique = {id(s): s for s in [self.language, *self.emotion.values()]}
        return list(unique.values())

    @property
    def feature_params(self) -> tuple[FeatureParams, ...]:
        """The distinct feature settings the models need (usually one)."""
        return tuple(dict.fromkeys(spec.features for spec in self.specs))

    def choose_backends(self, requested: str | None = None) -> tuple[str, ...]:
        """The backend running each model of :attr:`specs`, ``"litert"`` or ``"keras"``.

        Args:
            requested: ``"auto"``, ``"litert"`` or ``"keras"``; None reads
                ``$ANNOTATE_BACKEND`` (see :func:`annotate.modelling.inference.choose_backend`).

        Raises:
            UsageError: ``requested`` is not a backend.
            ModelError: LiteRT was asked for but cannot run a model.
        """
        from annotate.modelling.inference import choose_backend

        return tuple(choose_backend(spec, requested) for spec in self.specs)

    def choose_backbone_backends(self, requested: str | None = None,
                                 language_source=None) -> dict[str, str]:
        """The backend running each backbone: LiteRT where its export covers the layers read.

        Args:
            requested: As for :meth:`choose_backends`.
            language_source: The run's
                :class:`~annotate.modelling.language_source.LanguageSource`;
                where it asks Whisper, the language model's backbone also runs
                Whisper's language identification.

        Raises:
            ModelError: LiteRT was asked for but cannot run a backbone.
        """
        from annotate.modelling.inference import choose_backbone_backend

        return {name: choose_backbone_backend(spec, self.backbone_layers(name), requested,
                                              language=self.identifies_language(name,
                                                                                language_source))
                for name, spec in self.backbones.items()}

    def identifies_language(self, backbone: str, language_source=None) -> bool:
        """Whether backbone ``backbone`` runs Whisper's language step (or may: the cascade)."""
        return (language_source is not None and language_source.asks_whisper
                and self.language.backbone is not None
                and self.language.backbone.name == backbone)

    def describe_backbones(self, backends: dict[str, str], language_source=None) -> list[dict]:
        """Name, folder, content hash, layers read and backend of each backbone.

        A backbone running Whisper's language identification also has its
        ``language`` record (file, temperature).
        """
        return [
            {
                "name": name,
                "folder": str(spec.folder),
                "hash": folder_hash(spec.folder),
                "layers": list(self.backbone_layers(name)),
                "backend": backends[name],
                **({"language": spec.language.run_record()}
                   if self.identifies_language(name, language_source) else {}),
            }
            for name, spec in self.backbones.items()
        ]

    def describe(self, backends: Sequence[str]) -> list[dict]:
        """Name, task, languages, folder, content hash and backend of each model.

        Args:
            backends: The backend of each model of :attr:`specs` (:meth:`choose_backends`).
        """
        routes = {id(s): sorted(k for k, v in self.emotion.items() if v is s) for s in self.specs}
        return [
            {
                "name": spec.name,
                "task": spec.task,
                "languages": list(spec.languages),
                "routed_for": routes[id(spec)] if spec.task == "emotion" else None,
                "folder": str(spec.folder),
                "hash": folder_hash(spec.folder),
                "backend": backend,
                "backbone": spec.backbone.name if spec.backbone else None,
            }
            for spec, backend in zip(self.specs, backends, strict=True)
        ]


def _bundled_specs(bundled: Path) -> dict[str, list[ModelSpec]]:
    by_task: dict[str, list[ModelSpec]] = {}
    if not bundled.is_dir():
        return by_task
    for folder in sorted(p for p in bundled.iterdir() if (p / "model.json").is_file()):
        spec = read_model_folder(folder)
        by_task.setdefault(spec.task, []).append(spec)
    return by_task
