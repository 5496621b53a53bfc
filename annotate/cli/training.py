"""Command-line commands for corpora, training and evaluation.

These are typer command functions, registered by :mod:`annotate.cli`
(``app.command()(corpus)`` ...). Each validates its arguments, makes one
library call and prints the result; the heavy modules are imported inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from annotate.cli.console import console, fail, out
from annotate.errors import AnnotateError, UsageError

CorpusOption = Annotated[
    list[str],
    typer.Option(
        "--corpus",
        help="NAME=PATH of a labelled corpus (commonvoice, cremad, emodb, emovo, ravdess, "
        "attack). Repeatable.",
        show_default=False,
    ),
]


def _read_corpora(specs: list[str]):
    from annotate.training.corpora import parse_corpus_arg, read_corpus

    if not specs:
        raise UsageError("no corpus given: pass --corpus NAME=PATH (e.g. emodb=/data/emodb)")
    return [read_corpus(*parse_corpus_arg(spec)) for spec in specs]


def _say(text: str) -> None:
    console.print(text, highlight=False)


def corpus(
    specs: Annotated[list[str], typer.Argument(
        help="NAME=PATH of each corpus to read (e.g. emodb=/data/emodb).", show_default=False)],
    to_manifest: Annotated[Optional[Path], typer.Option(
        "--to-manifest", help="Also write the labelled recordings as a Parquet manifest "
        "(one table for all corpora given).")] = None,
) -> None:
    """Show what a corpus adapter finds: files, speakers, labels and unparseable names."""
    try:
        corpora = _read_corpora(specs)
        for found in corpora:
            _print_corpus_summary(found.summary())
        if to_manifest is not None:
            written = _combined(corpora).to_manifest(to_manifest)
            _say(f"wrote manifest [bold]{written}[/] ({sum(len(c.items) for c in corpora)} recordings)")
    except AnnotateError as error:
        raise fail(error) from None


def _combined(corpora):
    """One Corpus holding the items of several (for one manifest)."""
    import os

    import pandas as pd

    from annotate.training.corpora.base import Corpus

    if len(corpora) == 1:
        return corpora[0]
    items = pd.concat([c.items for c in corpora], ignore_index=True).sort_values(
        "path", ignore_index=True
    )
    root = Path(os.path.commonpath([str(c.root) for c in corpora]))
    return Corpus("+".join(c.name for c in corpora), root, items,
                  sorted(u for c in corpora for u in c.unparsed))


def _print_corpus_summary(summary: dict) -> None:
    out.print(f"[bold]{summary['corpus']}[/] at {summary['root']}: {summary['files']} files, "
              f"{summary['speakers']} speakers, {len(summary['unparsed'])} unparseable",
              highlight=False)
    table = Table("label", "files", title=f"{summary['corpus']}: files per label")
    for label, count in summary["labels"].items():
        table.add_row(str(label), str(count))
    out.print(table)
    if summary["unparsed"]:
        bad = Table("file", "why not labelled", title="unparseable (first 10)")
        for entry in summary["unparsed"][:10]:
            bad.add_row(entry["path"], entry["reason"])
        out.print(bad)


def train(
    task: Annotated[str, typer.Argument(
        help="What the model labels: language, emotion or attitude.", show_default=False)],
    corpus: CorpusOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="The model folder to write.")],
    architecture: Annotated[str, typer.Option(
        help="head: a small network on a pretrained backbone's features (the bundled "
        "models' kind); or, from scratch on log-mel frames: cnn, crnn, stats (utterance "
        "statistics, linear) or cnn_stats (the CNN with a statistics branch).")] = "head",
    backbone: Annotated[str, typer.Option(
        help="With --architecture head: a bundled backbone's name or a backbone folder.")
    ] = "whisper-base",
    search: Annotated[int, typer.Option(
        help="With --architecture head: trials of the settings search (layers, width, L2, "
        "dropout, learning rate, epochs) over speaker-disjoint folds; 0 uses fixed "
        "settings.")] = 16,
    folds: Annotated[int, typer.Option(
        help="With --architecture head: speaker-disjoint validation folds.")] = 4,
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="With --architecture head: where encoded recordings are cached "
        "[default: $ANNOTATE_CACHE or ~/.cache/annotate/backbone].")] = None,
    copies: Annotated[Optional[int], typer.Option(
        help="With --architecture head: augmented copies (noise, reverberation, speed, "
        "telephone channel) of each training recording, trained on but never validated "
        "[default: 2 for language, 0 for emotion]; --no-augment makes none.")] = None,
    cascade: Annotated[bool, typer.Option(
        help="With --architecture head, for a language head on a backbone with Whisper's "
        "language step: also fit when the head asks that step and how the two are fused, "
        "on the out-of-fold validation (what annotate run --language-id cascade uses).")] = True,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 30,
    batch_size: Annotated[int, typer.Option(help="Crops per gradient step.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seeds split, weights, order and augmentation.")] = 0,
    patience: Annotated[int, typer.Option(
        help="Stop after this many epochs without a lower validation loss.")] = 5,
    no_augment: Annotated[bool, typer.Option(
        "--no-augment", help="Train on clean features only.")] = False,
    languages: Annotated[Optional[str], typer.Option(
        help="Languages an emotion/attitude model serves, comma-separated; '*' for a "
        "cross-lingual model [default: the corpora's languages].")] = None,
    segment_s: Annotated[float, typer.Option(
        "--segment", help="Segment (model input) length in seconds.")] = 3.0,
    validation_fraction: Annotated[float, typer.Option(
        help="Share of speakers set aside for validation (corpora without an official dev split).")] = 0.2,
    max_files_per_corpus: Annotated[Optional[int], typer.Option(
        help="Use a seeded sample of at most this many files per corpus (quick runs).")] = None,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j", help="Worker processes for decoding and features [default: all cores].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    init_from: Annotated[Optional[Path], typer.Option(
        help="A model folder whose matching layers start the network (transfer learning, "
        "e.g. from a model trained on more corpora).")] = None,
    freeze_initialised: Annotated[bool, typer.Option(
        help="With --init-from: keep the copied layers fixed, train only the rest.")] = False,
) -> None:
    """Train a language, emotion or attitude model folder on labelled corpora."""
    try:
        from annotate.features import FeatureParams
        from annotate.training.train import train as train_model

        if segment_s <= 0:
            raise UsageError(f"segment length must be positive, got {segment_s}")
        corpora = _read_corpora(corpus)
        if architecture == "head":
            from annotate.training.heads import train_on_corpora

            if search < 0 or folds < 2 or (copies is not None and copies < 0):
                raise UsageError(f"--search and --copies must be >= 0 and --folds >= 2, "
                                 f"got {search}, {copies}, {folds}")
            spec = train_on_corpora(
                task, corpora, output, backbone=backbone, trials=search, n_folds=folds,
                seed=seed, window_s=segment_s, cache_dir=cache_dir, jobs=jobs,
                copies=0 if no_augment else copies, cascade=cascade,
                languages=[c.strip() for c in languages.split(",") if c.strip()]
                if languages else None, overwrite=overwrite, report=_say)
            v = spec.metrics["validation"]
            out.print(
                f"[bold]{spec.folder}[/]: {spec.task} head on {backbone}, labels "
                f"{', '.join(spec.labels)}; validation per recording ({v['split']}): "
                f"accuracy {v['accuracy']:.3f}, UAR {v['uar']:.3f}, ECE {v['ece']:.3f}; "
                f"temperature {spec.temperature:.3f}", highlight=False)
            return
        spec = train_model(
            task, corpora, output,
            architecture=architecture, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, patience=patience,
            validation_fraction=validation_fraction,
            augment=not no_augment, features=FeatureParams(segment_s=segment_s),
            languages=[c.strip() for c in languages.split(",") if c.strip()] if languages else None,
            progress=_say, max_files_per_corpus=max_files_per_corpus, jobs=jobs,
            overwrite=overwrite, init_from=init_from, freeze_initialised=freeze_initialised,
        )
    except AnnotateError as error:
        raise fail(error) from None
    metrics = spec.metrics
    out.print(
        f"[bold]{spec.folder}[/]: {spec.task} model, labels {', '.join(spec.labels)}; "
        f"validation per recording: accuracy {metrics['accuracy']:.3f}, "
        f"UAR {metrics['uar']:.3f}, ECE {metrics['ece']:.3f}; temperature {spec.temperature:.3f}",
        highlight=False,
    )


def evaluate(
    model: Annotated[Path, typer.Argument(help="The model folder to measure.", show_default=False)],
    corpus: CorpusOption,
    protocol: Annotated[str, typer.Option(
        help="holdout: score every recording with the model (pass speakers it was not "
        "trained on); loso: retrain per left-out speaker with the model's hyperparameters.")]
    = "holdout",
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Write the full result (per speaker, per recording) as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Draw the confusion matrix to this PNG (needs matplotlib).")] = None,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j", help="Worker processes for decoding and features [default: all cores].")] = None,
    language_id: Annotated[str, typer.Option(
        "--language-id", help="For a language head, as annotate run: auto (the cascade where "
        "the model records one, as a run labels), head, cascade or whisper.")] = "auto",
    speakers: Annotated[bool, typer.Option(
        "--speakers", help="For an emotion head under holdout: each speaker's probabilities "
        "relative to their own voice, as annotate run --speakers (the corpus' speakers).")]
    = False,
) -> None:
    """Measure a model on labelled corpora: accuracy, UAR, ECE, confusion matrix."""
    try:
        from annotate.training.evaluate import evaluate as evaluate_model
        from annotate.training.evaluate import plot_confusion

        if plot is not None:
            _check_matplotlib()
        corpora = _read_corpora(corpus)
        result = evaluate_model(model, corpora, protocol, jobs=jobs, progress=_say,
                                language_id=language_id, speakers=speakers)
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if plot is not None:
            plot_confusion(result, plot)
    except AnnotateError as error:
        raise fail(error) from None
    _print_result(result)


def _check_matplotlib() -> None:
    """Fail before the work, not after it, when --plot cannot be drawn."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib, which annotate does not depend on: "
                         "install it (pip install matplotlib) or leave out --plot")


def _print_result(result: dict) -> None:
    line = (f"{result['protocol']}: {result['n_recordings']} recordings, accuracy "
            f"{result['accuracy']:.3f}, UAR {result['uar']:.3f}, ECE {result['ece']:.3f}")
    if "mean_fold_uar" in result:
        line += f", mean UAR per fold {result['mean_fold_uar']:.3f}"
    if "language_id" in result:
        line += f" (language: {result['language_id']})"
    out.print(line, highlight=False)
    if result.get("warning"):
        console.print(f"[yellow]warning:[/] {result['warning']}", highlight=False)
    labels = result["confusion"]["labels"]
    table = Table("true \\ predicted", *labels, "recall", title="confusion (recordings)")
    for label, row in zip(labels, result["confusion"]["matrix"]):
        recall = result["per_class_recall"][label]
        table.add_row(label, *(str(v) for v in row), "-" if recall is None else f"{recall:.2f}")
    out.print(table)


__all__ = ["corpus", "evaluate", "train"]
