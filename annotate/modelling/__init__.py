"""Models: the model-folder format, the set a run uses, networks, inference, LiteRT export.

Not to be confused with ``annotate.models``, the bundled model folders (data).
"""
