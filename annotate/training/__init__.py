"""Training and evaluation: corpora adapters, training data, augmentation, the held-out split."""
