"""What the commands share: the consoles, the exit codes, errors turned into exit codes.

Exit codes: 0 every recording annotated; 1 the run finished but some inputs
failed (see the failures table); 2 usage error (bad option, input or
output path); 3 the run could not proceed (model, partial state, lock, disk);
130 interrupted (Ctrl-C; run the same command again to resume).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from annotate.errors import AnnotateError, UsageError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

console = Console(stderr=True)
out = Console()


def fail(error: AnnotateError) -> typer.Exit:
    """Print the error and return the exit that fits it (raise it)."""
    console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILED)


#: Whether this interpreter exists to run one command (set by :func:`annotate.cli.main`).
IN_OWN_PROCESS = False


@contextlib.contextmanager
def imports_kept_from_the_collector() -> Iterator[None]:
    """Import without garbage collection, then freeze what was imported.

    Imports make no garbage worth collecting, and modules live as long as the
    process. The collector spent 0.12-0.15 s of a run (30 min of audio) in
    271 collections, most over the objects of numpy, scipy, pyarrow, pandas
    and LiteRT; with this, 0.02 s in 98. Only in the ``annotate`` process itself
    (:func:`annotate.cli.main`): a program or test calling the commands keeps its collector.
    """
    if not IN_OWN_PROCESS:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
