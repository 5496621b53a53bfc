"""One exception hierarchy for the library; only :mod:`annotate.cli` turns it into exit codes."""

from __future__ import annotations


class AnnotateError(Exception):
    """Base class of every error the library raises on purpose."""


class UsageError(AnnotateError):
    """The caller asked for something that cannot work (bad option, bad path)."""


class InputError(AnnotateError):
    """An input (recording, manifest, corpus) cannot be read or understood.

    Attributes:
        kind: A short machine-readable kind, written to the failures table.
    """

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind


class ModelError(AnnotateError):
    """A model folder is missing files, inconsistent or unsafe to load."""


class StateError(AnnotateError):
    """The partial state of an interrupted run does not fit this run."""


def expected_one_of(what: str, value: object, valid: list | tuple | set) -> str:
    """Format the message for a value outside its valid set.

    Example: ``bad language 'xx', expected one of [de, en, fr, it]``.
    """
    listed = ", ".join(str(v) for v in sorted(valid))
    return f"bad {what} {value!r}, expected one of [{listed}]"
