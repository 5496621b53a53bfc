"""The golden output table: the example corpus through the bundled models, as committed.

A change that moves every run alike (segment bounds, speech decisions, labels,
column order, metadata keys and settings) shows here, even where the other
tests, which compare one run with another, cannot see it. The golden file
changes only on purpose:

    cd tests && python -m pytest test_golden.py --update-golden

Everything is compared exactly but the probabilities, which are compared to
1e-5: LiteRT's kernels take other SIMD paths on other processors, and the
last bits of a float move with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import annotate
from annotate.pipeline.store import read_metadata

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "corpus"
GOLDEN = Path(__file__).parent / "golden" / "example_table.json"
#: Probabilities may differ by this much between processors.
PROBABILITY_TOLERANCE = 1e-5


def key_tree(value):
    """The keys of nested dicts (lists by their first item): what the metadata holds."""
    if isinstance(value, dict):
        return {k: key_tree(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [key_tree(value[0])] if value and isinstance(value[0], (dict, list)) else []
    return None


def snapshot(out: Path) -> dict:
    """What the golden file holds of a run's output."""
    frame = pd.read_parquet(out)
    metadata = read_metadata(out)
    return {
        "columns": [[name, str(dtype)] for name, dtype in frame.dtypes.items()],
        "rows": json.loads(frame.to_json(orient="values", double_precision=15)),
        "metadata_keys": key_tree(metadata),
        "settings": metadata["settings"],
        "schema_version": metadata["schema_version"],
        "models": [{k: m[k] for k in ("name", "task", "languages", "routed_for", "hash",
                                      "backend", "backbone")} for m in metadata["models"]],
        "backbones": [{k: b[k] for k in ("name", "hash", "layers", "backend")}
                      for b in metadata["backbones"]],
    }


def dump(snapshot: dict) -> str:
    """JSON with one table row or column per line, so that a refresh reads as a diff."""
    lines = ["{"]
    for i, (key, value) in enumerate(snapshot.items()):
        end = "," if i < len(snapshot) - 1 else ""
        if key in ("rows", "columns"):
            items = ",\n".join("  " + json.dumps(item) for item in value)
            lines.append(f"{json.dumps(key)}: [\n{items}\n]{end}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, indent=1)}{end}")
    return "\n".join(lines) + "\n}\n"


@pytest.fixture
def example_output(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("ANNOTATE_MODELS")  # the suite hides the bundled models by default
    monkeypatch.delenv("ANNOTATE_BACKEND", raising=False)
    out = tmp_path / "example.parquet"
    result = annotate.run([EXAMPLES], out, jobs=1)
    assert result.failed == 0
    return out


def test_the_example_corpus_gives_the_golden_table(example_output, request):
    got = snapshot(example_output)
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(dump(got))  # then compared like any other run
    want = json.loads(GOLDEN.read_text())
    for key in ("columns", "metadata_keys", "settings", "schema_version", "models", "backbones"):
        assert got[key] == want[key], f"{key} differs from the golden table's"
    assert len(got["rows"]) == len(want["rows"])
    names = [name for name, _ in want["columns"]]
    floats = {i for i, (name, dtype) in enumerate(want["columns"])
              if dtype == "float64" and name not in ("start_s", "end_s")}
    for mine, theirs in zip(got["rows"], want["rows"], strict=True):
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if i in floats and a is not None and b is not None:
                assert abs(a - b) <= PROBABILITY_TOLERANCE, (names[i], mine[:3], a, b)
            else:
                assert a == b, (names[i], mine[:3], a, b)
