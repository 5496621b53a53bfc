"""The ``annotate report`` and ``annotate app`` commands (registered in :mod:`annotate.cli`).

Thin like the other commands: validate, build, make one call. Matplotlib and
Streamlit are imported only when a command runs, so ``annotate --help`` stays instant.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli.console import console, fail
from annotate.errors import AnnotateError, UsageError

#: The folder that holds the ``annotate`` package (``annotate/cli/views.py`` -> its parent).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
#: The Streamlit script that ``annotate app`` runs.
APP_SCRIPT = PACKAGE_PARENT / "annotate" / "views" / "app.py"


def report(
    table: Annotated[Path, typer.Argument(help="A table written by `annotate run`.",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")],
    recording: Annotated[Optional[list[str]], typer.Option(
        help="A recording (its path as in the table) to draw a timeline for. Repeatable; "
             "default: the longest recordings.")] = None,
    timelines: Annotated[int, typer.Option(
        help="How many of the longest recordings get a timeline when none is named.")] = 3,
) -> None:
    """Write a self-contained HTML report: languages, emotions, confidence, timelines, failures."""
    from annotate.views.report import write_report

    try:
        written = write_report(table, output, recording or None, timelines)
    except AnnotateError as error:
        raise fail(error) from None
    console.print(f"wrote [bold]{written}[/]", highlight=False)


def app(
    port: Annotated[int, typer.Option(help="The port to serve the app on.")] = 8501,
    address: Annotated[str, typer.Option(
        help="The address to listen on; the default keeps the app (and your audio) "
             "on this machine.")] = "127.0.0.1",
    results: Annotated[Optional[Path], typer.Option(
        help="A table written by `annotate run` to browse.")] = None,
    corpus_root: Annotated[Optional[Path], typer.Option(
        help="The folder the table's paths are relative to (the input of `annotate run`), "
             "to play segments.")] = None,
    language_model: Annotated[Optional[Path], typer.Option(
        help="Language model folder replacing the bundled one.")] = None,
    emotion_model: Annotated[Optional[list[str]], typer.Option(
        help="LANG=DIR: an emotion model folder for clips in LANG ('*' for all others). "
             "Repeatable.")] = None,
) -> None:
    """Open an app in the browser: annotate a recorded or uploaded clip, browse a results table."""
    try:
        config = app_config(results, corpus_root, language_model, emotion_model or [])
        command = streamlit_command(config, port, address)
    except AnnotateError as error:
        raise fail(error) from None
    console.print(f"annotate app on [bold]http://{address}:{port}[/] (Ctrl-C stops it)",
                  highlight=False)
    process = subprocess.Popen(command, env=app_environment())
    try:
        code = process.wait()
    except KeyboardInterrupt:  # Streamlit got the same signal and shuts down
        code = process.wait()
    raise typer.Exit(0 if code in (0, -2, 130) else code)


def app_config(results: Path | None, corpus_root: Path | None, language_model: Path | None,
               emotion_models: list[str]):
    """Check the app's options and return its configuration.

    Raises:
        UsageError: A bad option, table or corpus root.
        ModelError: A model folder given is not a usable model.
    """
    from annotate.views.app_logic import AppConfig, check_results, parse_emotion_models

    if results is not None:
        check_results(results)
    if corpus_root is not None and not corpus_root.is_dir():
        raise UsageError(f"the corpus root {corpus_root} is not a directory")
    config = AppConfig(
        language_model=str(language_model) if language_model else None,
        emotion_models=tuple(parse_emotion_models(emotion_models).items()),
        results=str(results) if results else None,
        corpus_root=str(corpus_root) if corpus_root else None,
    )
    if language_model is not None or emotion_models:
        config.load_models()  # a wrong folder fails here, not in the browser
    return config


def streamlit_command(config, port: int, address: str = "127.0.0.1") -> list[str]:
    """The ``python -m streamlit run annotate/views/app.py ...`` command line.

    Raises:
        UsageError: Streamlit is not installed or the port is out of range.
    """
    import importlib.util

    from annotate.views.app_logic import MAX_UPLOAD_MB

    if importlib.util.find_spec("streamlit") is None:
        raise UsageError("the app needs Streamlit: pip install streamlit")
    if not 1 <= port <= 65535:
        raise UsageError(f"bad port {port}, expected 1 to 65535")
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--",
        *config.to_argv(),
    ]


def app_environment() -> dict[str, str]:
    """The environment of the app process: this one, able to import this ``annotate``."""
    env = dict(os.environ)
    package_parent = str(PACKAGE_PARENT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def start_app(config, port: int, address: str = "127.0.0.1", **popen) -> subprocess.Popen:
    """Start the app in the background exactly as ``annotate app`` does (for tests, scripts).

    Args:
        config: An :class:`annotate.views.app_logic.AppConfig`.
        port: The port to serve on.
        address: The address to listen on.
        **popen: Passed to :class:`subprocess.Popen` (e.g. ``stdout``).
    """
    return subprocess.Popen(streamlit_command(config, port, address), env=app_environment(),
                            **popen)


__all__ = ["APP_SCRIPT", "app", "app_config", "report", "start_app", "streamlit_command"]
