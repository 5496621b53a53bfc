"""Find the folders that ship with the package: ``models/`` and ``schemas/``.

They live at the top of the repository and are installed inside the package
(``annotate.models``, ``annotate.schemas``), so an installed copy finds them
from any working directory; a source checkout finds them beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_dir(name: str) -> Path:
    """The folder of ``annotate.<name>``: ``models`` or ``schemas``."""
    try:
        return Path(str(resources.files(f"annotate.{name}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / name
