"""The installed package's version, as ``annotate.__version__`` offers it.

Its own module so that the run, which records it in every output, need not
import the package's top (which offers the run as ``annotate.run``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("annotate")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"
