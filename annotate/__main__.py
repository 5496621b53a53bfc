"""``python -m annotate``: the same as the ``annotate`` command."""

from annotate.cli import main

main()
