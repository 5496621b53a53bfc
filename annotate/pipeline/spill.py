"""Features of a long recording parked on disk until the whole recording is read.

The emotion model for a recording is chosen from the language of the whole
recording, so its features must wait for its last chunk. For a recording of
hours that would hold hundreds of MB in the main process: past a budget,
:class:`SpillFolder` writes each further chunk's features to a ``.npy`` file
and hands back a :class:`SpilledFeatures` that inference reads one chunk at a
time (``np.asarray`` loads it). The numbers are the same; only where they
wait changes.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np


class SpilledFeatures:
    """One chunk's features on disk; ``len()`` without reading, ``np.asarray()`` reads."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path = path
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = np.load(self.path)
        return array if dtype is None else array.astype(dtype, copy=False)


class SpillFolder:
    """A temporary folder (removed by :meth:`close`) that takes features past a budget.

    Args:
        parent: Where the folder is made (the run's ``.partial`` folder, so it
            shares the output's disk and is gone with it).
        budget_bytes: Features of one recording kept in memory before spilling.
    """

    def __init__(self, parent: Path, budget_bytes: int) -> None:
        self.parent = parent
        self.budget_bytes = budget_bytes
        self._folder: Path | None = None
        self._names = itertools.count()
        self.spilled_bytes = 0

    def keep(self, features: dict, held_bytes: int) -> tuple[dict, int]:
        """``features`` (per setting) as they should be held, and the bytes now held.

        Below the budget the arrays stay in memory; past it they go to disk.
        """
        size = sum(a.nbytes for a in features.values() if isinstance(a, np.ndarray))
        if held_bytes + size <= self.budget_bytes or size == 0:
            return features, held_bytes + size
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="spill-", dir=self.parent))
        kept = {}
        for params, array in features.items():
            path = self._folder / f"{next(self._names)}.npy"
            np.save(path, array)
            kept[params] = SpilledFeatures(path, len(array))
        self.spilled_bytes += size
        return kept, held_bytes

    def release(self, features: dict) -> None:
        """Delete the files behind ``features`` (a recording's, once annotated)."""
        for items in features.values():
            for item in items if isinstance(items, list) else [items]:
                if isinstance(item, SpilledFeatures):
                    item.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the folder and whatever is still in it."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
