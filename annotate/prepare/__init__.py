"""From decoded audio to what the models read: segments, speech decisions, features.

Shared by ``annotate run`` (local and on a cluster), the app and training,
so that a model is trained and evaluated on segments cut exactly as a run
cuts them.
"""
