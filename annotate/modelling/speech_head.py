"""The speech detector's second stage: a speech head on the backbone's states.

Silero VAD decides most segments alone (:mod:`annotate.prepare.speech`). A
segment it is unsure of, whose frames reach :attr:`SpeechHead.unsure_p` but
are above the threshold for less than the minimum speech, is encoded like a
speech segment, and this head decides: a logistic regression on the pooled
hidden states of one layer of the backbone the labels read. Shouted speech
is what Silero misses most, and Whisper's states know it for speech; the
head only ever sees the segments Silero was unsure of, and the encoder runs
on them only.

The folder (``models/speech-head``, fitted by ``scripts/fit_speech_head.py``)
holds ``head.json`` (the backbone and layer it reads, the weights, the bias,
the threshold and the band it checks) and a model card.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from annotate.errors import ModelError
from annotate.resources import resource_dir

#: The bundled head's folder, inside the package's models.
FOLDER = "speech-head"
FILE = "head.json"


@dataclass(frozen=True)
class SpeechHead:
    """A speech/non-speech head on one backbone layer's pooled states.

    Attributes:
        backbone: The backbone's name (``whisper-base``).
        width: The pooled state's width it reads.
        layer: The hidden state it reads (0 is the input to block 1).
        weights: np.ndarray [shape=(width,), float64], on the raw pooled state.
        bias: The logit's offset.
        threshold: The probability from which a checked segment is speech.
        unsure_p: Silero's frame probability from which a segment that is
            not speech is checked.
        sha256: Of ``head.json``: what the run's metadata records.
    """

    backbone: str
    width: int
    layer: int
    weights: np.ndarray = field(compare=False, repr=False)
    bias: float
    threshold: float
    unsure_p: float
    sha256: str

    def probability(self, pooled: np.ndarray) -> np.ndarray:
        """Probability of speech of each segment, from its pooled states of :attr:`layer`.

        Args:
            pooled: np.ndarray [shape=(n, width)].
        """
        logits = np.asarray(pooled, np.float64) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))

    def describe(self) -> dict:
        """What the run's metadata records of the head."""
        return {"file": f"{FOLDER}/{FILE}", "sha256": self.sha256, "backbone": self.backbone,
                "layer": self.layer, "threshold": self.threshold, "unsure_p": self.unsure_p}


def read_speech_head(folder: str | Path) -> SpeechHead:
    """The head in ``folder``.

    Raises:
        ModelError: The folder is missing or its ``head.json`` is broken.
    """
    path = Path(folder) / FILE
    try:
        content = path.read_bytes()
        spec = json.loads(content)
        weights = np.asarray(spec["weights"], np.float64)
        head = SpeechHead(backbone=str(spec["backbone"]), width=int(spec["width"]),
                          layer=int(spec["layer"]), weights=weights, bias=float(spec["bias"]),
                          threshold=float(spec["threshold"]), unsure_p=float(spec["unsure_p"]),
                          sha256=hashlib.sha256(content).hexdigest())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"the speech head in {folder} cannot be read ({error}); reinstall "
                         "annotate, or pass --speech-detector energy") from None
    if weights.shape != (head.width,):
        raise ModelError(f"{path}: {weights.shape[0] if weights.ndim else 0} weights for "
                         f"a state of width {head.width}")
    if not (0.0 < head.threshold < 1.0 and 0.0 < head.unsure_p < 1.0):
        raise ModelError(f"{path}: threshold and unsure_p must be probabilities in (0, 1)")
    return head


def write_speech_head(folder: str | Path, head: dict, card: str) -> None:
    """Write ``head.json`` (the keys :func:`read_speech_head` reads) and the model card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FILE).write_text(json.dumps(head, indent=1) + "\n")
    (folder / "MODEL_CARD.md").write_text(card)


@cache
def bundled_speech_head() -> SpeechHead | None:
    """The package's head, or None when it is not installed (the check is then off)."""
    folder = resource_dir("models") / FOLDER
    return read_speech_head(folder) if (folder / FILE).is_file() else None
