"""Fitting a log-mel network with Keras: seeded, deterministic, early stopping.

A fresh network (optionally started from a donor model's layers) is fitted
one epoch at a time, on freshly augmented crops each epoch, with
class-balanced loss; after each epoch the validation loss and UAR are
measured, and the weights of the lowest validation loss are kept.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from annotate.errors import ModelError
from annotate.modelling.model_folder import ModelSpec
from annotate.training.metrics import negative_log_likelihood, unweighted_average_recall
from annotate.training.training_data import augmented_features


def fit_network(crops, val_features, val_true, labels, hyper, features, report, jobs,
                donor=None, freeze=False):
    """Fit a fresh network; return it (best validation-loss weights) and the history."""
    from annotate.modelling.inference import tensorflow

    tf = tensorflow()
    keras = tf.keras
    keras.utils.set_random_seed(hyper.seed)
    with _deterministic_ops(tf):
        return _fit_seeded(tf, crops, val_features, val_true, labels, hyper, features,
                           report, jobs, donor, freeze)


@contextlib.contextmanager
def _deterministic_ops(tf):
    """Enable TensorFlow's deterministic ops while fitting, then restore the setting.

    Left on, it would make any later unseeded random op in the process fail.
    """
    try:
        from tensorflow.python.framework import config as tf_config

        was_enabled = tf_config.is_op_determinism_enabled()
    except (ImportError, AttributeError):  # a TensorFlow without the switch back
        tf_config, was_enabled = None, True
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if tf_config is not None and not was_enabled:
            tf_config.disable_op_determinism()


def _fit_seeded(tf, crops, val_features, val_true, labels, hyper, features, report, jobs,
                donor=None, freeze=False):
    from annotate.modelling.networks import build_network

    keras = tf.keras
    model = build_network(hyper.architecture, features, len(labels), hyper.network)
    copied = copy_matching_layers(model, donor) if donor is not None else []
    if donor is not None:
        report(f"initialised {len(copied)} layers from {donor.name}: {', '.join(copied)}"
               + (" (kept fixed)" if freeze else ""))
        for layer in model.layers:
            if layer.name in copied and freeze:
                layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(hyper.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    index = {label: i for i, label in enumerate(labels)}
    true = crops.meta["label"].map(index).to_numpy(np.int64)
    counts = np.bincount(true, minlength=len(labels)).astype(np.float64)
    class_weight = np.where(counts > 0, len(true) / (len(labels) * np.maximum(counts, 1)), 0.0)
    weights = class_weight[true].astype(np.float32)
    monitor = _epoch_monitor(tf, val_features, val_true, labels, hyper, report)
    order_rng = np.random.default_rng([hyper.seed, 1])
    for epoch in range(hyper.epochs):
        x = (augmented_features(crops, features, hyper.augmentation, hyper.seed, epoch, jobs)
             if hyper.augment else crops.features)
        order = order_rng.permutation(len(true))
        # A tf.data pipeline of our own, already shuffled: Keras' adapter for
        # numpy arrays trips a TensorFlow error message under deterministic ops.
        batches = tf.data.Dataset.from_tensor_slices(
            (x[order], true[order], weights[order])
        ).batch(hyper.batch_size)
        model.fit(batches, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0,
                  callbacks=[monitor])
        if monitor.stop:
            break
    monitor.restore_best()
    return model, {
        "epochs_run": len(monitor.history["loss"]),
        "best_epoch": monitor.best_epoch + 1,
        "history": monitor.history,
        "layers_initialised": copied,
    }


def copy_matching_layers(model, donor: ModelSpec) -> list[str]:
    """Copy into ``model`` the weights of the donor's layers with the same name and shapes.

    The output layer (``logits``) is never copied: the labels differ.

    Raises:
        ModelError: The donor's features differ (its filters would not fit),
            or no layer matches.
    """
    from annotate.modelling.inference import Classifier

    if donor.features.n_mels != model.input_shape[-1]:
        raise ModelError(f"{donor.folder}: its features ({donor.features.n_mels} mel bands) do "
                         f"not match this model's ({model.input_shape[-1]})")
    source = {layer.name: layer for layer in Classifier(donor).keras_model.layers}
    copied = []
    for layer in model.layers:
        theirs = source.get(layer.name)
        if layer.name == "logits" or theirs is None or not layer.weights:
            continue
        weights = theirs.get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(weights)
        copied.append(layer.name)
    if not copied:
        raise ModelError(f"{donor.folder}: no layer matches this network by name and shape")
    return copied


def _epoch_monitor(tf, val_features, val_true, labels, hyper, report):
    """A Keras callback: validation loss and UAR, a progress line, early stopping."""
    keras = tf.keras

    val_batches = tf.data.Dataset.from_tensor_slices(val_features).batch(64)

    class EpochMonitor(keras.callbacks.Callback):
        """Measures validation after each epoch and keeps the best weights.

        Unlike ``keras.callbacks.EarlyStopping`` its state lasts over the
        one-epoch ``fit`` calls (each epoch gets freshly augmented data).
        """

        def __init__(self) -> None:
            super().__init__()
            self.best_loss = math.inf
            self.best_epoch = -1
            self.best_weights = None
            self.wait = 0
            self.stop = False
            self.started = time.monotonic()
            self.history: dict[str, list[float]] = {"loss": [], "val_loss": [], "val_uar": []}

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            logits = self.model.predict(val_batches, verbose=0)
            val_loss = negative_log_likelihood(logits, val_true)
            val_uar = unweighted_average_recall(val_true, logits)
            logs["val_loss"], logs["val_uar"] = val_loss, val_uar
            loss = float(logs.get("loss", math.nan))
            for key, value in (("loss", loss), ("val_loss", val_loss), ("val_uar", val_uar)):
                self.history[key].append(round(float(value), 5))
            better = val_loss < self.best_loss - 1e-4
            if better:
                self.best_loss, self.best_epoch, self.wait = val_loss, epoch, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
            report(f"epoch {epoch + 1}/{hyper.epochs}  loss {loss:.4f}  val loss {val_loss:.4f}"
                   f"  val UAR {val_uar:.3f}  ({time.monotonic() - self.started:.1f} s)"
                   + ("  *best*" if better else ""))
            if self.wait >= hyper.patience:
                self.stop = True
                self.model.stop_training = True
                report(f"early stop: no lower validation loss for {hyper.patience} epochs; "
                       f"keeping epoch {self.best_epoch + 1}")

        def restore_best(self) -> None:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return EpochMonitor()
