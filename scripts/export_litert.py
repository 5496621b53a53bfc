"""Export model folders for LiteRT, so that `annotate run` runs them without TensorFlow.

Each folder's ``model.keras`` is converted to ``model.tflite`` (float32,
checked against Keras) and ``model.json`` records which ``model.keras`` it
was made from. ``annotate train`` does this for every model it writes; this
script is for folders made before, or whose ``model.keras`` was replaced.

Usage: python scripts/export_litert.py FOLDER [FOLDER ...]
       python scripts/export_litert.py models/*/     # the bundled models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotate.errors import AnnotateError  # noqa: E402
from annotate.modelling.litert_export import export_litert  # noqa: E402


def main() -> int:
    """Export every folder given; return 1 if any failed (the others are still exported)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="model folders")
    args = parser.parse_args()
    failed = 0
    for folder in args.folders:
        try:
            path = export_litert(folder)
        except AnnotateError as error:
            print(f"{folder}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
