"""Output schemas (installed as ``annotate.schemas``)."""
