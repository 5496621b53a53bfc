"""The output schema, read from ``schemas/`` (the one source of truth)."""

from __future__ import annotations

import functools
import json

import pyarrow as pa

from annotate.labels import EMOTIONS
from annotate.resources import resource_dir

_TYPES = {"string": pa.string(), "float64": pa.float64(), "bool": pa.bool_()}


@functools.cache
def load_schema(name: str) -> dict:
    """The JSON schema document ``schemas/<name>.schema.json``."""
    text = (resource_dir("schemas") / f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def segments_schema(languages: tuple[str, ...]) -> pa.Schema:
    """The Arrow schema of the segments table for a language model's languages."""
    fields = []
    for column in load_schema("segments")["columns"]:
        kind = _TYPES[column["type"]]
        if "pattern" in column:
            values = languages if column["for_each"] == "language" else EMOTIONS
            key = "code" if column["for_each"] == "language" else "label"
            names = [column["pattern"].format(**{key: value}) for value in values]
        else:
            names = [column["name"]]
        fields.extend(pa.field(name, kind, nullable=column["nullable"]) for name in names)
    return pa.schema(fields)


def failures_schema() -> pa.Schema:
    """The Arrow schema of the failures table."""
    return pa.schema(
        pa.field(c["name"], _TYPES[c["type"]], nullable=c["nullable"])
        for c in load_schema("failures")["columns"]
    )
