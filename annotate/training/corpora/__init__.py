"""Corpus adapters: read a speech corpus' own layout into one table of labelled recordings.

Each adapter takes the corpus folder as the user downloaded it and returns a
``Corpus`` (see ``base.py``); files that do not fit the corpus' naming are
reported in ``Corpus.unparsed``, never dropped or guessed.

Example::

    name, root = parse_corpus_arg("emodb=/data/emodb")
    corpus = read_corpus(name, root)
    corpus.to_manifest("manifests/emodb.parquet")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from annotate.errors import UsageError, expected_one_of
from annotate.training.corpora.attack import read_attack
from annotate.training.corpora.base import Corpus
from annotate.training.corpora.commonvoice import read_commonvoice
from annotate.training.corpora.cremad import read_cremad
from annotate.training.corpora.emodb import read_emodb
from annotate.training.corpora.emovo import read_emovo
from annotate.training.corpora.ravdess import read_ravdess
from annotate.training.corpora.speechocean import read_speechocean

#: Corpus name -> adapter reading that corpus' folder.
CORPORA: dict[str, Callable[[str | os.PathLike], Corpus]] = {
    "commonvoice": read_commonvoice,
    "cremad": read_cremad,
    "emodb": read_emodb,
    "emovo": read_emovo,
    "ravdess": read_ravdess,
    "attack": read_attack,
    "speechocean762": read_speechocean,
}

__all__ = ["CORPORA", "Corpus", "parse_corpus_arg", "read_corpus"]


def _check_name(name: str) -> str:
    if name not in CORPORA:
        raise UsageError(expected_one_of("corpus", name, CORPORA))
    return name


def parse_corpus_arg(text: str) -> tuple[str, Path]:
    """Split a ``NAME=PATH`` command-line argument.

    Args:
        text: e.g. ``"emodb=/data/emodb"``; the name is case-insensitive.

    Returns:
        The corpus name and its folder (``~`` expanded; not checked to exist).

    Raises:
        UsageError: If ``=`` or the path is missing, or the name is unknown.
    """
    names = ", ".join(sorted(CORPORA))
    name, equals, path = text.partition("=")
    name, path = name.strip().lower(), path.strip()
    if not equals:
        raise UsageError(f"bad corpus {text!r}, expected NAME=PATH with NAME one of [{names}]")
    _check_name(name)
    if not path:
        raise UsageError(f"bad corpus {text!r}: no folder after '=', expected {name}=PATH")
    return name, Path(path).expanduser()


def read_corpus(name: str, root: str | os.PathLike) -> Corpus:
    """Read the corpus ``name`` from its folder ``root``.

    Raises:
        UsageError: If ``name`` is not in ``CORPORA``.
        InputError: If ``root`` is missing or no recording could be labelled.
    """
    return CORPORA[_check_name(name)](root)
