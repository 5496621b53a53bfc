"""Bundled model folders (installed as ``annotate.models``)."""
