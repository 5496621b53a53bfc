"""The ``annotate`` command line: thin commands over the library.

One module per command group (:mod:`~annotate.cli.run`, :mod:`~annotate.cli.training`,
:mod:`~annotate.cli.views`), sharing :mod:`~annotate.cli.console`; this module
builds the typer app from them.

Exit codes: 0 every recording annotated; 1 the run finished but some inputs
failed (see the failures table); 2 usage error (bad option, input or
output path); 3 the run could not proceed (model, partial state, lock, disk);
130 interrupted (Ctrl-C; run the same command again to resume).
"""

from __future__ import annotations

import gc
import signal
import sys

import typer

from annotate.cli import console as _shared
from annotate.cli import run as _run_commands
from annotate.cli import training as _training_commands
from annotate.cli import views as _view_commands

app = typer.Typer(
    help="Label speech corpora with spoken language and emotion, segment by segment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command()(_run_commands.run)
app.command()(_run_commands.summarize)
app.command(name="models")(_run_commands.list_models)
app.command()(_training_commands.corpus)
app.command()(_training_commands.train)
app.command()(_training_commands.evaluate)
app.command()(_view_commands.report)
app.command(name="app")(_view_commands.app)


def main() -> None:
    """The ``annotate`` command as a process (the console script and ``python -m annotate``)."""
    _shared.IN_OWN_PROCESS = True
    # Ctrl-C stops a run cleanly and it resumes: hear it even when the parent
    # left SIGINT ignored (Python keeps an inherited SIG_IGN; seen from a test
    # process after some in-process TensorFlow work).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app(prog_name="annotate")
    finally:
        # The process ends here and the operating system takes its memory
        # back. Frozen, what the command imported and allocated is left out
        # of the interpreter's last garbage collections: from the output's
        # last write to the end of the process took 0.30-0.37 s, now
        # 0.07-0.10 s (annotate run, 30 min of audio).
        gc.freeze()


__all__ = ["app", "main"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
