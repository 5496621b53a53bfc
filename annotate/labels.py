"""The label vocabularies shared by the models, the adapters and the output table."""

from __future__ import annotations

#: Canonical emotion labels, in the order of the ``emo_<label>`` columns.
EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happiness",
    "sadness",
    "anger",
    "fear",
    "disgust",
    "surprise",
    "boredom",
)

#: Languages the bundled language model knows (ISO 639-1), in column order.
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "it")

#: The languages Whisper identifies (ISO 639-1, and ``haw``), in the order of
#: its language tokens (``annotate.backbone.whisper_language``): the candidates
#: ``annotate run --languages`` accepts beyond the language model's.
WHISPER_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv",
    "it", "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no",
    "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr",
    "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw",
    "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu",
    "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl",
    "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su",
)

#: Social attitudes of Att-HACK (their own label set, not emotions).
ATTITUDES: tuple[str, ...] = ("friendly", "distant", "dominant", "seductive")

TASKS: tuple[str, ...] = ("language", "emotion", "attitude")
