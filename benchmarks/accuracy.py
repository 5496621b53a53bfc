"""Accuracy of the bundled models on speakers they never heard, through `annotate run`.

For every corpus in ``--corpora`` the held-out speakers of
:mod:`annotate.training.heldout` are written to a manifest and annotated with
``annotate.run`` (the same function as the command line) using the bundled
models (or ``--models DIR``); each recording's label is the duration-weighted
mean of its segments' probabilities (``annotate summarize --per-recording``).
Emotion is scored with the recording's language given (``--languages``), so
that routing picks the corpus' emotion model; language is scored with all four
candidates. A telephone-band test (8 kHz, Common Voice clips from
``commonvoice_extra``, a sample never used in training) checks robustness to
the channel. ``--loso`` adds leave-one-speaker-out retraining for EmoDB and
EMOVO (``annotate evaluate --protocol loso``) with the bundled models'
hyperparameters. Beside the models, the issue's strongest anchor is measured
on the same split when ``opensmile`` and ``scikit-learn`` are installed
(``pip install '.[bench]'``): openSMILE ComParE 2016 functionals, standardised,
and a linear SVM trained on the training speakers.

Usage: python benchmarks/accuracy.py --corpora ../shared/corpora [--models models] [--loso]
       [--json results.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import annotate
from annotate.labels import LANGUAGES
from annotate.training import heldout
from annotate.training.corpora import read_corpus
from annotate.training.evaluate import classification_metrics
from annotate.views.summarize import per_recording

#: Figures the issue gives for the same kind of split, for comparison.
ANCHORS = {
    "language: commonvoice": ">= 0.90 acc | plain CNN 0.36; MFCC stats + SVM 0.42",
    "language: telephone (never trained on)": ">= 0.85 acc | plain CNN 0.49",
    "language: emodb": ">= 0.95 acc | plain CNN 1.00",
    "language: emovo": ">= 0.95 acc | plain CNN 0.93",
    "language: ravdess": ">= 0.95 acc | plain CNN 0.80",
    "emotion: emodb": ">= 0.80 UAR | ComParE+SVM 0.72; plain CNN 0.43",
    "emotion: emovo": ">= 0.55 UAR | ComParE+SVM 0.40; plain CNN 0.24",
    "emotion: ravdess": ">= 0.65 UAR | ComParE+SVM 0.58; plain CNN 0.59",
}


def annotate_manifest(paths: list[str], work: Path, name: str, models: Path | None,
                      languages: list[str] | None) -> pd.DataFrame:
    manifest = work / f"{name}.csv"
    pd.DataFrame({"path": paths}).to_csv(manifest, index=False)
    out = work / f"{name}.parquet"
    kwargs = {}
    if models is not None:
        kwargs["language_model"] = models / "language"
        kwargs["emotion_models"] = {
            p.name.removeprefix("emotion-").replace("multi", "*"): p
            for p in models.glob("emotion-*")
        }
    annotate.run([manifest], out, languages=languages, overwrite=True, **kwargs)
    return per_recording(pd.read_parquet(out)).set_index("path")


def score(rows: pd.DataFrame, truth: dict[str, str], prefix: str) -> dict:
    """Accuracy, UAR and ECE of per-recording probabilities in ``prefix*`` columns."""
    columns = [c for c in rows.columns if c.startswith(prefix) and rows[c].notna().any()]
    labels = [c.removeprefix(prefix) for c in columns]
    rows = rows[rows[columns].notna().all(axis=1)]  # recordings with speech
    keep = [p for p in rows.index if truth.get(p) in labels]
    true = np.array([labels.index(truth[p]) for p in keep])
    probs = rows.loc[keep, columns].to_numpy(np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    metrics = classification_metrics(true, probs, labels)
    metrics["unscored"] = len(truth) - len(keep)
    return metrics


def telephone_set(corpora: Path, work: Path) -> dict[str, str]:
    """Common Voice clips never used in training, band-limited to 8 kHz telephone audio."""
    import soundfile as sf

    from annotate.audio.decode import probe, read_span
    from annotate.training.augment import telephone

    truth = {}
    folder = work / "telephone"
    for path in sorted(glob.glob(str(corpora / "commonvoice_extra" / "*" / "**" / "*.mp3"),
                                 recursive=True)):
        language = Path(path).relative_to(corpora / "commonvoice_extra").parts[0]
        info = probe(path)
        samples = telephone(read_span(path, info, 0, info.duration_s, 16000), 16000)
        target = folder / language / (Path(path).stem + ".wav")
        target.parent.mkdir(parents=True, exist_ok=True)
        import soxr

        sf.write(target, soxr.resample(samples, 16000, 8000), 8000, subtype="PCM_16")
        truth[str(target)] = language
    return truth


def _smile_functionals(paths: list[str]) -> np.ndarray:
    import opensmile
    import soundfile as sf

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                            feature_level=opensmile.FeatureLevel.Functionals)
    rows = []
    for path in paths:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        rows.append(smile.process_signal(samples.mean(axis=1), rate).to_numpy()[0])
    return np.nan_to_num(np.array(rows, dtype=np.float64))


def opensmile_baseline(corpus, jobs: int = 2) -> dict | None:
    """The issue's strongest anchor on our split: ComParE 2016 + a linear SVM.

    Functionals standardised, the SVM trained on the training speakers of
    :mod:`annotate.training.heldout` and scored on the held-out ones.

    Returns None when ``opensmile`` or ``scikit-learn`` is missing.
    """
    try:
        import opensmile  # noqa: F401
        from joblib import Parallel, delayed
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC
    except ImportError:
        return None
    parts = {}
    for part in ("train", "test"):
        items = heldout.split(corpus, part).items
        paths = [str(corpus.root / p) for p in items["path"]]
        blocks = [list(b) for b in np.array_split(paths, jobs) if len(b)]  # in order
        features = Parallel(n_jobs=jobs)(delayed(_smile_functionals)(b) for b in blocks)
        parts[part] = (np.concatenate(features), items["label"].to_numpy())
    labels = sorted(set(parts["train"][1]))
    model = make_pipeline(StandardScaler(), LinearSVC(C=1e-3, class_weight="balanced",
                                                      max_iter=20000))
    model.fit(*parts["train"])
    x_test, y_test = parts["test"]
    predicted = model.predict(x_test)
    probs = np.eye(len(labels))[[labels.index(p) for p in predicted]]  # hard decisions
    keep = np.isin(y_test, labels)
    true = np.array([labels.index(y) for y in y_test[keep]])
    metrics = classification_metrics(true, probs[keep], labels)
    metrics["ece"] = float("nan")  # an SVM gives no probabilities
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, default=Path("../shared/corpora"))
    parser.add_argument("--models", type=Path, help="a folder of model folders (default: bundled)")
    parser.add_argument("--loso", action="store_true", help="also LOSO retraining (slow)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="annotate-accuracy-"))
    results: dict[str, dict] = {}

    sets = {}
    for name in ("commonvoice", "emodb", "emovo", "ravdess"):
        folder = args.corpora / name
        if folder.is_dir():
            sets[name] = heldout.split(read_corpus(name, folder), "test").items
    for name, items in sets.items():
        truth_lang = dict(zip(items["path"], items["language"]))
        rows = annotate_manifest(list(items["path"]), work, f"{name}-lang", args.models, None)
        results[f"language: {name}"] = score(rows.rename(index=lambda p: p), truth_lang, "lang_")
        if name != "commonvoice":
            language = items["language"].iloc[0]
            rows = annotate_manifest(list(items["path"]), work, f"{name}-emo", args.models,
                                     [language])
            results[f"emotion: {name}"] = score(rows, dict(zip(items["path"], items["label"])),
                                                "emo_")
            results[f"emotion: {name}"]["speakers"] = sorted(items["speaker"].unique())
            baseline = opensmile_baseline(read_corpus(name, args.corpora / name))
            if baseline is not None:
                results[f"  ComParE + linear SVM: {name}"] = baseline
    if (args.corpora / "commonvoice_extra").is_dir():
        truth = telephone_set(args.corpora, work)
        rows = annotate_manifest(list(truth), work, "telephone", args.models, None)
        results["language: telephone (never trained on)"] = score(rows, truth, "lang_")
    if args.loso:
        from annotate.modelling.model_folder import bundled_models_dir
        from annotate.training.evaluate import evaluate

        models = args.models or bundled_models_dir()
        for name, model in (("emodb", "emotion-de"), ("emovo", "emotion-it")):
            corpus = read_corpus(name, args.corpora / name)
            result = evaluate(models / model, [corpus], "loso")
            results[f"emotion LOSO: {name}"] = {
                "n": result["n_recordings"], "accuracy": result["accuracy"],
                "uar": result["uar"], "ece": result["ece"],
                "mean_fold_uar": result.get("mean_fold_uar"),
            }

    print(f"{'test set (held-out speakers)':42} {'n':>5} {'acc':>6} {'UAR':>6} {'ECE':>6}  target | anchors")
    for key, r in results.items():
        print(f"{key:42} {r['n']:5d} {r['accuracy']:6.3f} {r['uar']:6.3f} {r['ece']:6.3f}  "
              f"{ANCHORS.get(key, '')}")
    print(f"languages: {', '.join(LANGUAGES)}; per recording (duration-weighted mean of segments)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
