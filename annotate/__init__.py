"""annotate: label speech corpora with spoken language and emotion, segment by segment.

The pipeline, in the order data flows through it::

    discover -> decode -> segment -> features -> inference -> rows -> store

``annotate.run`` is the whole pipeline as one Python function; the ``annotate``
command line calls it. TensorFlow is imported only to train or export a model,
or to run one that has no current LiteRT export.
"""

from __future__ import annotations

from annotate._version import __version__

__all__ = ["__version__", "run"]


def __getattr__(name: str):
    # Keeps ``import annotate`` (and joblib workers importing submodules) light.
    if name == "run":
        from annotate.pipeline.run import run

        return run
    raise AttributeError(name)
