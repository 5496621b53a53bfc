"""Fit the temperature of Whisper's language identification on validation speakers.

Run by ``make models`` after ``scripts/build_backbone.py``. It runs the
backbone's language path (``model.tflite`` then ``language.tflite``, as
``annotate run --language-id whisper`` does) on every speech segment of the
training speakers (``annotate.training.heldout``; never the held-out ones)
of Common Voice and the actor corpora found under ``--corpora``, keeps the
scores of en/de/fr/it (the candidates the corpora can check), and fits the
one temperature that minimises their negative log-likelihood. Each corpus
weighs the same: at most ``--per-corpus`` recordings of each, drawn with a
fixed seed. The temperature and what it was fitted on go into
``backbone.json`` (``language.temperature``, ``language.fitted_on``); the
exports stay as they are.

Then its context step (``language.context_threshold``, ``context_weight``):
which recordings, unsure with Whisper's identification alone, are asked once
more with Whisper's own 30 s context (their speech joined and padded, as a
run builds it), and the weight of that answer
(:func:`annotate.modelling.language_fusion.fit_context`, within
:data:`~annotate.modelling.language_fusion.WHISPER_CONTEXT_BUDGET` of the
recordings). It is chosen on the same recordings and, as the cascade's is,
on speechocean762's accented English and on Common Voice clips in the
telephone band (``scripts/fit_language_cascade.py``), every set weighing
the same.

Usage: python scripts/fit_language_id.py --corpora ../shared/corpora [--backbone models/whisper-base]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fit_language_cascade import telephone_copies  # noqa: E402

from annotate.backbone.whisper_language import LANGUAGE_CODES  # noqa: E402
from annotate.modelling.backbone_folder import SPEC_FILE, read_backbone_folder  # noqa: E402
from annotate.modelling.language_fusion import (  # noqa: E402
    CONTEXT_THRESHOLDS,
    CONTEXT_WINDOW_FRAMES,
    WHISPER_CONTEXT_BUDGET,
    ContextFit,
    fit_context,
)
from annotate.modelling.posteriors import softmax  # noqa: E402
from annotate.training import heldout  # noqa: E402
from annotate.training.calibration import (  # noqa: E402
    context_language_probs,
    fit_temperature,
    whisper_language_logits,
)
from annotate.training.corpora import read_corpus  # noqa: E402
from annotate.training.encoding import default_cache_dir  # noqa: E402
from annotate.training.metrics import expected_calibration_error  # noqa: E402
from annotate.training.reference import reference_backbone  # noqa: E402

CANDIDATES = ("de", "en", "fr", "it")
CORPORA = ("commonvoice", "emodb", "emovo", "ravdess")
#: Sets the context step is also chosen on (with the telephone band of Common Voice).
CONTEXT_CORPORA = ("speechocean762",)
SEED = 20261202


def training_sample(corpora: Path, name: str, size: int, seed: int = SEED) -> pd.DataFrame:
    """At most ``size`` recordings of a corpus' training speakers, drawn with a fixed seed."""
    items = heldout.split(read_corpus(name, corpora / name), "train").items
    if len(items) > size:
        items = items.sample(size, random_state=seed)
    return items.reset_index(drop=True)


def fit_whisper_context(spec, items: pd.DataFrame, jobs: int | None) -> ContextFit:
    """Whisper-alone's context step, chosen on ``items`` (a column ``corpus`` names each set).

    Each recording's segments are scored as ``--language-id whisper`` scores
    them (the candidates :data:`CANDIDATES`, Whisper's fitted temperature);
    a recording asked is asked on its speech padded to
    :data:`~annotate.modelling.language_fusion.CONTEXT_WINDOW_FRAMES`
    (speech past it dropped: the run would ask the rest as another stretch).
    The thresholds tried go up to the first that asks more than the budget
    (so the table shows what the next step would buy); the recordings
    below it are asked with their padded window.
    """
    from annotate.backbone.runtime import Backbone
    from annotate.modelling.posteriors import recording_means
    from annotate.training.training_data import load_recordings

    params = spec.features
    loaded, failures = load_recordings(items, params, jobs)
    for failure in failures:
        print(f"  skipped {failure.path}: {failure.message}")
    features, owner = loaded.stacked(params)
    durations = loaded.segment_durations()
    runner = Backbone(spec, (0,), "litert", params.n_frames, language=True)
    _, logits = runner.encode([features], params.segment_frames(durations))
    columns = [LANGUAGE_CODES.index(code) for code in CANDIDATES]
    probs = softmax(logits[:, columns].astype(np.float64), spec.language.temperature)
    seen = np.isin(np.arange(len(loaded)), owner)  # recordings with speech segments
    top = recording_means(probs, owner, durations, len(loaded)).max(axis=1)
    tried = []
    for threshold in CONTEXT_THRESHOLDS:
        tried.append(threshold)
        if np.mean(top[seen] < threshold) > WHISPER_CONTEXT_BUDGET:
            break
    need = np.flatnonzero(seen & (top < max(tried)))
    print(f"context: {len(need)} of {seen.sum()} recordings below {max(tried)}", flush=True)
    context = context_language_probs(runner, loaded, need, columns, spec.language.temperature,
                                     CONTEXT_WINDOW_FRAMES)
    truth = loaded.meta["language"].map(CANDIDATES.index).to_numpy()[owner]
    group = loaded.meta["corpus"].astype(str).to_numpy()
    return fit_context(probs, context, truth, owner, durations, group, thresholds=tuple(tried),
                       budget=WHISPER_CONTEXT_BUDGET)


def segment_logits(spec, items, jobs: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Whisper's language logits of every speech segment of ``items``, and each one's language."""
    logits, segments, failures = whisper_language_logits(spec, items, spec.features.segment_s,
                                                         jobs)
    for failure in failures:
        print(f"  skipped {failure.path}: {failure.message}")
    return logits, segments["language"].to_numpy()


def fitted_temperature(spec, drawn: dict[str, pd.DataFrame], jobs: int | None):
    """Whisper's language record with the temperature fitted on ``drawn``'s segments."""
    logits, truth, used = [], [], []
    columns = [LANGUAGE_CODES.index(code) for code in CANDIDATES]
    for name, items in drawn.items():
        found, languages = segment_logits(spec, items, jobs)
        logits.append(found[:, columns].astype(np.float64))
        truth.append(np.array([CANDIDATES.index(code) for code in languages]))
        used.append(f"{name} {len(items)}")
        print(f"{name}: {len(items)} recordings, {len(found)} segments")
    logits, truth = np.concatenate(logits), np.concatenate(truth)
    temperature = fit_temperature(logits, truth)
    before = softmax(logits)
    after = softmax(logits, temperature)
    print(f"accuracy {float((before.argmax(1) == truth).mean()):.3f} per segment over "
          f"{len(truth)} segments; temperature {temperature:.3f}; ECE "
          f"{expected_calibration_error(before, truth):.3f} -> "
          f"{expected_calibration_error(after, truth):.3f}")
    fitted_on = (f"speech segments of training speakers ({', '.join(used)} recordings; "
                 f"annotate/training/heldout.py), scores of {', '.join(CANDIDATES)}")
    return dataclasses.replace(spec.language, temperature=round(float(temperature), 4),
                               fitted_on=fitted_on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, default=ROOT / "models" / "whisper-base")
    parser.add_argument("--per-corpus", type=int, default=200,
                        help="recordings drawn from each corpus' training speakers")
    parser.add_argument("--keep-temperature", action="store_true",
                        help="fit the context step only, with the temperature already fitted")
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    # Fitted on the float states, as the heads are (annotate.training.reference).
    spec = reference_backbone(read_backbone_folder(args.backbone))
    if spec.language is None:
        raise SystemExit(f"{args.backbone} has no language export (scripts/build_backbone.py)")
    drawn = {name: training_sample(args.corpora, name, args.per_corpus)
             for name in CORPORA if (args.corpora / name).is_dir()}
    if not drawn:
        raise SystemExit(f"none of {', '.join(CORPORA)} under {args.corpora}")
    if not args.keep_temperature:
        spec = dataclasses.replace(spec, language=fitted_temperature(spec, drawn, args.jobs))
    language = spec.language

    # The context step, on the same recordings, accented English and the telephone band.
    for name in CONTEXT_CORPORA:
        if (args.corpora / name).is_dir():
            drawn[name] = training_sample(args.corpora, name, args.per_corpus)
    if "commonvoice" in drawn:
        drawn["telephone"] = telephone_copies(
            training_sample(args.corpora, "commonvoice", args.per_corpus, SEED + 1),
            default_cache_dir() / "telephone-validation")
    sets = pd.concat([items.assign(corpus=name) for name, items in drawn.items()],
                     ignore_index=True)
    fit = fit_whisper_context(spec, sets, args.jobs)
    names = sorted(drawn)
    print(fit.report(names))
    language = dataclasses.replace(
        language, context_threshold=fit.threshold, context_weight=fit.weight,
        context_window_frames=CONTEXT_WINDOW_FRAMES,
        context_validation={
            "fitted_on": (f"training speakers (annotate/training/heldout.py): "
                          f"{', '.join(f'{n} {len(drawn[n])}' for n in names)} recordings, "
                          "telephone: Common Voice clips band-limited; per recording, "
                          f"Whisper's identification alone over {', '.join(CANDIDATES)}"),
            "budget": WHISPER_CONTEXT_BUDGET, "per_recording_accuracy": fit.table})
    path = args.backbone / SPEC_FILE
    raw = json.loads(path.read_text())
    # What was fitted, into the folder's own record: the reference's file and
    # precision are the cache's float16 exports, not the folder's.
    own = {key: raw["language"][key] for key in ("file", "weights_sha256", "quantization")}
    raw["language"] = language.to_json() | own
    path.write_text(json.dumps(raw, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
