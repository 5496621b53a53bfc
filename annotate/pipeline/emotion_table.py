"""Reading and replacing one emotion model's probabilities in the segments table.

What the table-level adaptations share (:mod:`annotate.pipeline.centring`,
:mod:`annotate.pipeline.speakers`): the rows each emotion model labelled,
their ``emo_*`` probabilities, and the table with new ones (``emotion`` and
``emotion_p`` following).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from annotate.labels import EMOTIONS

COLUMNS = tuple(f"emo_{label}" for label in EMOTIONS)


@dataclass
class EmotionColumns:
    """A segments table's emotion columns as Python lists, to read and replace by model."""

    table: pa.Table

    def __post_init__(self) -> None:
        self.models = self.table.column("emotion_model").to_pylist()
        self.paths = self.table.column("path").to_pylist()
        self.durations = (self.table.column("end_s").to_numpy()
                          - self.table.column("start_s").to_numpy())
        self.values = {name: self.table.column(name).to_pylist() for name in COLUMNS}
        self.emotion = self.table.column("emotion").to_pylist()
        self.emotion_p = self.table.column("emotion_p").to_pylist()

    def model_names(self) -> list[str]:
        """The emotion models that labelled some row, by name."""
        return sorted({m for m in self.models if m is not None})

    def probabilities(self, model: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The rows ``model`` labelled, its columns, and their probabilities [rows, columns]."""
        rows = np.flatnonzero([m == model for m in self.models])
        present = [c for c in COLUMNS if self.values[c][rows[0]] is not None]
        probs = np.array([[self.values[c][r] for c in present] for r in rows], np.float64)
        return rows, present, probs

    def replace(self, rows: np.ndarray, present: list[str], probs: np.ndarray) -> None:
        """New probabilities for ``rows`` (``emotion`` and ``emotion_p`` follow)."""
        for j, column in enumerate(present):
            for i, r in enumerate(rows):
                self.values[column][r] = float(probs[i, j])
        for i, r in enumerate(rows):
            best = int(np.argmax(probs[i]))
            self.emotion[r] = present[best].removeprefix("emo_")
            self.emotion_p[r] = float(probs[i, best])

    def to_table(self) -> pa.Table:
        """The table with every replacement made."""
        table = self.table
        replaced = {"emotion": self.emotion, "emotion_p": self.emotion_p, **self.values}
        for name, column in replaced.items():
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(name),
                                     pa.array(column, type=table.schema.field(name).type))
        return table
