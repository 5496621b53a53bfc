"""The speaker split of the bundled models: who is held out for testing.

The bundled models are trained without these speakers, and
``benchmarks/accuracy.py`` measures them on these speakers only. The split is
fixed here (lists for the actor corpora, a hash of the speaker id for Common
Voice), so that retraining and evaluating always agree.
"""

from __future__ import annotations

import dataclasses
import hashlib

from annotate.training.corpora import Corpus

#: Held-out actors: one man and one woman where the corpus allows.
TEST_SPEAKERS: dict[str, frozenset[str]] = {
    "emodb": frozenset({"emodb:03", "emodb:14"}),
    "emovo": frozenset({"emovo:m2"}),
    "ravdess": frozenset({"ravdess:01", "ravdess:02", "ravdess:11", "ravdess:12"}),
    "cremad": frozenset({f"cremad:{n}" for n in range(1001, 1092, 10)}),
}
#: Share of Common Voice speakers held out (by a hash of the speaker id).
COMMONVOICE_TEST_SHARE = 0.25


def is_test_speaker(corpus: str, speaker: str) -> bool:
    """Whether ``speaker`` of ``corpus`` is held out from training."""
    if corpus in TEST_SPEAKERS:
        return speaker in TEST_SPEAKERS[corpus]
    digest = hashlib.sha256(speaker.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < COMMONVOICE_TEST_SHARE


def split(corpus: Corpus, part: str) -> Corpus:
    """The ``"train"`` or ``"test"`` speakers of a corpus, as a corpus."""
    if part not in ("train", "test"):
        raise ValueError(f"bad part {part!r}, expected one of [test, train]")
    test = corpus.items["speaker"].map(lambda s: is_test_speaker(corpus.name, s))
    keep = test if part == "test" else ~test
    return dataclasses.replace(corpus, items=corpus.items[keep.to_numpy()].reset_index(drop=True))


def as_language_corpus(corpus: Corpus) -> Corpus:
    """Relabel a corpus' recordings with their language (for the language model)."""
    items = corpus.items.copy()
    items["label"] = items["language"]
    items["task"] = "language"
    return dataclasses.replace(corpus, items=items)
