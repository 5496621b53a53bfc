"""The segments table's emotions from heads trained for transfer, centred on the run.

A head trained for transfer (``model.json``'s ``run_centring``: the
cross-lingual emotion model) learnt each corpus relative to its own mean; a
run is heard the same way. When the table is written
(:func:`annotate.pipeline.store.final_table`), that model's rows are centred
on their duration-weighted mean over the whole run
(:func:`annotate.modelling.posteriors.centre_on_run`), from the rows alone:
local and cluster runs give the same table, a resumed run centres over
every recording, and the table does not depend on ``--jobs`` or
``--batch-size``. Other models' rows are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from annotate.modelling.model_folder import RunCentring
from annotate.modelling.posteriors import centre_on_run
from annotate.pipeline.emotion_table import EmotionColumns


@dataclass(frozen=True)
class Centring:
    """The run's centred models: per name, its ``run_centring`` entry, temperature and labels."""

    models: Mapping[str, tuple[RunCentring, float, tuple[str, ...]]]

    @classmethod
    def of_models(cls, models) -> Centring | None:
        """For a ModelSet: its emotion models with a ``run_centring`` entry; None if none has."""
        found = {spec.name: (spec.run_centring, spec.temperature, spec.labels)
                 for spec in models.specs if spec.run_centring is not None}
        return cls(found) if found else None

    def adapt(self, table: pa.Table) -> tuple[pa.Table, dict]:
        """The table with these models' rows centred on the run, and a summary for its metadata."""
        columns = EmotionColumns(table)
        summary = {}
        for model in columns.model_names():
            if model not in self.models:
                continue
            centring, temperature, labels = self.models[model]
            rows, present, probs = columns.probabilities(model)
            means = np.array([centring.mean_logits[labels.index(c.removeprefix("emo_"))]
                              for c in present])
            durations = columns.durations[rows]
            columns.replace(rows, present, centre_on_run(probs, durations, means, temperature,
                                                         centring.prior_s))
            summary[model] = {"segments": len(rows), "speech_s": float(durations.sum()),
                              "prior_s": centring.prior_s}
        return columns.to_table(), {"models": summary}
