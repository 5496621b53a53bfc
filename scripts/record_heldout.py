"""Write the held-out figures of ``benchmarks/accuracy.py --json`` into the bundled models.

Each head's ``model.json`` gains ``metrics.heldout`` (the split and, per
test set, n, accuracy, UAR and ECE through ``annotate run``) and its card a
held-out table, so that ``annotate models`` shows them. Only ``model.json``
and ``MODEL_CARD.md`` change; the weights and exports stay as they are.

Usage: python scripts/record_heldout.py results.json [--models models]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annotate.modelling.model_folder import SPEC_FILE, read_model_folder  # noqa: E402
from annotate.training.cards import head_card  # noqa: E402

#: Which test sets of the benchmark measure which bundled head.
SETS = {
    "language": ["language: commonvoice", "language: telephone", "language: emodb",
                 "language: emovo", "language: ravdess", "language: speechocean762"],
    "emotion-de": ["emotion: emodb"],
    "emotion-it": ["emotion: emovo"],
    "emotion-en": ["emotion: ravdess"],
    "emotion-multi": ["emotion, cross-lingual: emodb", "emotion, cross-lingual: emovo",
                      "emotion, cross-lingual: ravdess"],
}
SPLIT = ("held-out speakers of annotate/training/heldout.py, per recording through "
         "annotate run (telephone: commonvoice_extra at 8 kHz, never trained on)")


def set_name(key: str) -> str:
    """A benchmark row's test set as a card names it."""
    name = key.split(": ", 1)[1]
    if "cross-lingual" in key:  # run as a language without a head; 6 shared emotions scored
        return f"{name} (as French: one run, the 6 emotions all corpora share)"
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    args = parser.parse_args()
    systems = json.loads(args.results.read_text())["systems"]
    ours = systems["new"]
    for name, sets in SETS.items():
        folder = args.models / name
        raw = json.loads((folder / SPEC_FILE).read_text())
        raw["metrics"]["heldout"] = {
            "split": SPLIT,
            "sets": {set_name(key): {k: ours[key][k] for k in ("n", "accuracy", "uar", "ece")}
                     for key in sets if key in ours},
        }
        (folder / SPEC_FILE).write_text(json.dumps(raw, indent=2) + "\n")
        spec = read_model_folder(folder)
        (folder / "MODEL_CARD.md").write_text(head_card(spec))
        print(f"{name}: {', '.join(raw['metrics']['heldout']['sets'])}")


if __name__ == "__main__":
    main()
