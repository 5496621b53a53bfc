"""The ``annotate run``, ``annotate summarize`` and ``annotate models`` commands.

Registered on the app in :mod:`annotate.cli`; the library modules are imported
inside each command, so ``annotate --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from annotate.cli.console import (
    EXIT_INTERRUPTED,
    EXIT_PARTIAL,
    console,
    fail,
    imports_kept_from_the_collector,
    out,
)
from annotate.errors import AnnotateError, UsageError


def _parse_emotion_models(values: list[str]) -> dict[str, str]:
    models = {}
    for value in values:
        code, sep, folder = value.partition("=")
        if not sep or not code or not folder:
            raise UsageError(f"bad --emotion-model {value!r}, expected LANG=DIR (e.g. de=models/my-de)")
        models[code] = folder
    return models


def run(
    inputs: Annotated[list[Path], typer.Argument(
        help="Directories (walked recursively), manifests (.csv .tsv .parquet .jsonl with a "
             "'path' column) or audio files.", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The segments table to write (.parquet): a path or an fsspec URL (s3://...).")],
    window: Annotated[float, typer.Option(help="Segment length, seconds.")] = 3.0,
    hop: Annotated[Optional[float], typer.Option(help="Segment hop, seconds [default: the window].")] = None,
    speech_detector: Annotated[str, typer.Option(
        help="Which segments hold speech: silero (Silero VAD, shipped with the package: "
             "speech apart from music and noise; the segments it is unsure of are decided "
             "by a speech head on the backbone's states), silero-only (Silero VAD alone) or "
             "energy (the loudness gate of earlier versions: sound apart from silence)."
    )] = "silero",
    speech_threshold: Annotated[Optional[float], typer.Option(
        help="silero, silero-only: the probability above which a 32 ms frame is speech "
             "(a segment needs 0.25 s of them) [default: 0.5]; energy: the level in dBFS "
             "above which a 25 ms frame is loud (a segment needs 0.15 s of them) [default: -45].",
        show_default=False)] = None,
    languages: Annotated[Optional[str], typer.Option(
        help="Candidate languages, comma-separated (e.g. de,fr); one code means the language is known. "
             "Codes beyond the language model's go to Whisper's language identification "
             "(any of its 99 codes, e.g. en,ja,es).")] = None,
    language_id: Annotated[str, typer.Option(
        help="Where language probabilities come from: head (the language model), cascade "
             "(the head, fused with Whisper's language identification where the head is unsure), "
             "whisper (Whisper's own language identification: slower, any of its 99 codes) or "
             "auto (cascade when the head knows every candidate and records one, else head; "
             "whisper for codes beyond the head's).")] = "auto",
    speakers: Annotated[Optional[str], typer.Option(
        help="Make each speaker's emotions relative to their own voice: who speaks is each "
             "recording's folder (folder) or a manifest's 'speaker' column, Common Voice's "
             "'client_id' (manifest). Needs 20 s of speech a speaker and two speakers or more.",
        show_default=False)] = None,
    language_model: Annotated[Optional[Path], typer.Option(help="Language model folder replacing the bundled one.")] = None,
    emotion_model: Annotated[Optional[list[str]], typer.Option(
        help="LANG=DIR: an emotion model folder for recordings in LANG ('*' for all others). Repeatable.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Parallel jobs decoding and computing features [default: all cores].")] = None,
    workers: Annotated[str, typer.Option(
        help="Run those jobs as threads or processes; auto: threads up to 2 jobs (no start-up cost), "
             "processes beyond (no shared interpreter lock).")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Segments gathered per inference round (the table does not depend on it).")] = 256,
    overwrite: Annotated[bool, typer.Option(
        help="Start over, discarding partial state or an output made with other settings; "
             "recordings that failed in partial state of these settings are tried again.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    cluster: Annotated[Optional[str], typer.Option(
        help="Run on a Dask cluster: its scheduler's address (tcp://HOST:8786); see docs/cluster.md.")] = None,
    shard_size: Annotated[int, typer.Option(help="Recordings per task on the cluster (with --cluster).")] = 32,
    backend: Annotated[Optional[str], typer.Option(
        help="How the models run: auto (LiteRT where the model folder has a current export, "
             "else Keras), litert or keras [default: $ANNOTATE_BACKEND, else auto].",
        show_default=False)] = None,
) -> None:
    """Annotate every recording, segment by segment, into a Parquet table.

    Interrupted runs resume: run the same command again.
    """
    with imports_kept_from_the_collector():
        import pandas  # noqa: F401 - pyarrow imports it on its first conversion anyway

        from annotate.cli.progress import make_progress
        from annotate.pipeline.run import run as run_pipeline

    progress = make_progress(console, quiet)
    try:
        result = run_pipeline(
            inputs, output,
            language_model=language_model,
            emotion_models=_parse_emotion_models(emotion_model or []),
            languages=[c.strip() for c in languages.split(",") if c.strip()] if languages else None,
            language_id=language_id,
            window_s=window, hop_s=hop, speech_detector=speech_detector,
            speech_threshold=speech_threshold,
            jobs=jobs, batch_size=batch_size,
            overwrite=overwrite, progress=progress, cluster=cluster, shard_size=shard_size,
            backend=backend, workers=workers, speakers=speakers,
        )
    except AnnotateError as error:
        with _descriptor_2_as_it_is():
            progress.stop()
            raise fail(error) from None
    except KeyboardInterrupt:
        with _descriptor_2_as_it_is():
            progress.stop()
            console.print("[yellow]interrupted[/]: finished recordings are kept; "
                          "run the same command again to resume")
            sys.stderr.flush()
        from annotate.cli import console as shared

        if shared.IN_OWN_PROCESS:
            # The run's files are closed and its lock released. Native threads
            # (a feature thread inside numpy, an interpreter's pool) may still be
            # running: the interpreter's shutdown then sometimes died in C++
            # ("terminate called without an active exception", exit 1 instead of
            # 130), so the process ends here, as it would have after shutdown.
            import os

            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not quiet and not result.already_complete:
        console.print(
            f"wrote [bold]{escape(str(result.output))}[/]: {result.annotated} recordings annotated"
            + (f", {result.skipped} resumed" if result.skipped else "")
            + f", {result.failed} failed (see {escape(str(result.failures_output))})",
            highlight=False, soft_wrap=True)
    if not (result.annotated or result.skipped or result.failed or result.already_complete):
        # Said even with --quiet: an empty table is rarely what was meant.
        console.print("[yellow]warning[/]: no recordings found in "
                      f"{escape(', '.join(str(i) for i in inputs))}: a folder is searched for "
                      "audio files (.wav, .flac, .mp3, .ogg, ...), a manifest lists them",
                      highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(EXIT_PARTIAL)


def summarize(
    table: Annotated[Path, typer.Argument(help="A table written by `annotate run`.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    per_recording: Annotated[Optional[Path], typer.Option(
        help="Also write one row per recording (durations, mean probabilities, top labels) to this Parquet file.")] = None,
) -> None:
    """Report what an output table holds: hours, languages, emotions, confidence, failures."""
    from annotate.views import summarize as summary

    try:
        report = summary.summarize(table)
        if per_recording is not None:
            summary.per_recording(summary.read_output(table)).to_parquet(per_recording, index=False)
    except AnnotateError as error:
        raise fail(error) from None
    if as_json:
        out.print_json(json.dumps(report))
        return
    from annotate.views.report_text import print_report

    print_report(out, report)


def list_models() -> None:
    """List the bundled models: backbones, then heads with validation and held-out figures."""
    from annotate.modelling.backbone_folder import SPEC_FILE, read_backbone_folder
    from annotate.modelling.model_folder import bundled_models_dir, read_model_folder

    folder = bundled_models_dir()
    folders = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    backbones = Table("name", "architecture", "blocks", "run time", "source",
                      title=f"backbones in {folder}")
    for path in (p for p in folders if (p / SPEC_FILE).is_file()):
        spec = read_backbone_folder(path)
        export = spec.litert
        runs = (f"LiteRT, {export.n_layers} blocks, {export.quantization}" if export
                else "Keras")
        backbones.add_row(spec.name, spec.architecture, str(spec.n_layers), runs,
                          f"{spec.source.get('model', '')} ({spec.source.get('licence', '')})")
    if backbones.row_count:
        out.print(backbones)
    table = Table("name", "task", "languages", "labels", "reads", "validation", "held out",
                  title=f"models in {folder}")
    for path in (p for p in folders if (p / "model.json").is_file()):
        spec = read_model_folder(path)
        reads = (f"{spec.backbone.name} states {','.join(map(str, spec.backbone.layers))}"
                 if spec.backbone else "log-mel")
        if spec.cascade is not None:
            reads += f"; Whisper's language ID below top p {spec.cascade.threshold}"
        validation = _figures(spec.metrics.get("validation", spec.metrics))
        if spec.speaker_adaptation is not None:
            gains = spec.speaker_adaptation.validation.get("corpora", {})
            validation += "; --speakers: " + ", ".join(
                f"{name} UAR {r['uar_adapted']:.2f}" for name, r in gains.items())
        table.add_row(spec.name, spec.task, ",".join(spec.languages), ",".join(spec.labels),
                      reads, validation, _figures(spec.metrics.get("heldout", {})))
    out.print(table)


def _descriptor_2_as_it_is():
    """Hold off feature threads that point descriptor 2 elsewhere while the run's end is told.

    A run that stops leaves feature threads finishing their task; one may be
    catching a decoder's notes for a failure row on descriptor 2, and what
    the main thread printed then went into that capture: "interrupted" was
    lost (and the process ends right after, before the thread restores it).
    """
    from annotate.c_stderr import LOCK

    return LOCK


def _figures(metrics: dict) -> str:
    """``UAR 0.85, accuracy 0.86, ECE 0.04`` from a metrics entry (nested sets by name)."""
    names = {"uar": "UAR", "accuracy": "acc", "ece": "ECE"}
    flat = [f"{names[k]} {v:.2f}" for k, v in metrics.items()
            if k in names and isinstance(v, (int, float))]
    nested = []
    for key, value in metrics.items():
        inner = _figures(value) if isinstance(value, dict) else ""
        if inner:  # "sets" only groups the sets by name
            nested.append(inner if key == "sets" else f"{key}: {inner}")
    return "; ".join(filter(None, [", ".join(flat), *nested]))
