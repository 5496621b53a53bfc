"""A head's temperature is fitted on the recordings of the languages it serves."""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotate.training.calibration import calibration_rows
from annotate.training.encoding import EncodedRecordings


def recordings(languages):
    meta = pd.DataFrame({"path": [f"r{i}" for i in range(len(languages))],
                         "language": languages})
    return EncodedRecordings(meta, [np.zeros((1, 2, 4), np.float32)] * len(languages),
                             [np.ones(1)] * len(languages))


def test_a_one_language_head_calibrates_on_its_language_only():
    data = recordings(["it", "de", "it", "en"])
    assert calibration_rows(data, ("it",)).tolist() == [True, False, True, False]
    assert calibration_rows(data, ("de", "en")).tolist() == [False, True, False, True]


def test_cross_lingual_heads_and_unknown_languages_calibrate_on_everything():
    data = recordings(["it", "de"])
    assert calibration_rows(data, ("*",)).all()
    assert calibration_rows(data, ("fr",)).all()  # no French recording: all of them
    no_column = EncodedRecordings(data.meta.drop(columns="language"), data.states,
                                  data.durations)
    assert calibration_rows(no_column, ("it",)).all()
