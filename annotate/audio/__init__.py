"""Audio in: finding the recordings, decoding and resampling them, C stderr, spilling.

The lowest layer: it imports nothing of the package but :mod:`annotate.errors`.
"""
