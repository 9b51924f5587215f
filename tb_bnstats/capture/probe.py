"""The train/inference gap probe: one fixed batch through the model in
training mode and in inference mode, without changing anything.

What it measures, on the same probe batch (DESIGN.md §4, S1 and S8):

* the compiled loss and metrics in both modes -- the gap users see as "good
  training accuracy, bad validation accuracy" measured on one batch, so data
  differences are out of it;
* per BN layer, the drift of the layer's output between the modes,
  ``||y_train - y_inf|| / ||y_train||`` (Frobenius norms over the batch): it
  is ~0 above the first layer whose moving statistics do not fit, so the
  depth where the gap starts is visible;
* per BN layer, the probe batch's own moments (those the layer normalizes
  with in the training-mode pass, where upstream layers normalize with batch
  moments too) against the moving ones, with
  :func:`tb_bnstats.quantities.probe_series`. On a batch of the training
  distribution they are as close as the training batches' are; far apart
  with converged moving statistics means the probe data differ (S8).

How, without changing state: both passes run through Keras'
``model.stateless_call`` with the current variables, and the loss and metrics
through ``stateless_compute_loss`` and the compiled metrics' stateless API on
fresh (zero) metric state; every new value they return -- moving averages,
dropout's seed generator state, metric totals -- is thrown away. No
optimizer step, no moving-average update, the training run's RNG stream is
untouched. The BN layers are tapped with
:class:`tb_bnstats.population._MomentTap` (which bypasses the capture's
``_moments`` wrapper, so the logged update counts do not move) and the two
passes are one ``tf.function``, traced once for the fixed batch. Works for
functional and subclassed models alike (outputs are taken inside the calls).
"""

import dataclasses
from typing import Dict

import numpy as np

from tb_bnstats import population, quantities

# At most this many samples of the probe data are used (one batch).
MAX_PROBE_SAMPLES = 256


@dataclasses.dataclass
class ProbeLayer:
    """One BN layer on the probe batch (float64 per channel)."""

    probe_mean: np.ndarray
    probe_var: np.ndarray
    moving_mean: np.ndarray
    moving_var: np.ndarray
    output_drift: float


@dataclasses.dataclass
class ProbeResult:
    """``metrics_train`` / ``metrics_inference``: ``{"loss": ..., "accuracy": ...}``
    (empty without labels); ``layers``: per BN layer name."""

    metrics_train: Dict[str, float]
    metrics_inference: Dict[str, float]
    layers: Dict[str, ProbeLayer]


def take_probe_batch(data, max_samples=MAX_PROBE_SAMPLES):
    """``(x, y_or_None)``: the first ``max_samples`` rows of arrays, or the
    first batch of a dataset cut to ``max_samples`` rows."""
    x, y = next(iter(population.iter_batches(data, batch_size=max_samples)))
    rows = population._num_rows(x)
    if rows > max_samples:
        x = population._slice(x, slice(0, max_samples))
        y = None if y is None else np.asarray(y)[:max_samples]
    if rows == 0:
        raise ValueError("probe_data gave an empty batch")
    return x, y


class GapProbe:
    """Runs the probe batch ``(x, y)`` through ``model`` in both modes;
    ``named_layers``: ``[(name, bn_layer)]`` (``find_batchnorm_layers``)."""

    def __init__(self, model, x, y, named_layers):
        import tensorflow as tf

        self.model = model
        self.x = tf.nest.map_structure(tf.convert_to_tensor, x)
        self.y = None if y is None else tf.convert_to_tensor(y)
        self.tap = population._MomentTap(list(named_layers), force_training=False)
        self._fn = tf.function(self._both_modes)

    def _both_modes(self, x, y):
        """Traced once: both passes, loss and metrics, per-layer moments and
        output drift, all from stateless calls."""
        import tensorflow as tf
        from keras import ops

        model, tap = self.model, self.tap
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        outputs, per_layer = {}, {}
        for mode in (True, False):
            tap.sink, tap.outputs = ({} if mode else None), {}
            y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=mode)
            outputs[mode] = (y_pred, dict(tap.outputs), dict(tap.sink or {}))
            tap.sink = tap.outputs = None
        metrics = {}
        for mode, (y_pred, _, _) in outputs.items():
            metrics[mode] = {} if y is None else self._loss_and_metrics(trainable, non_trainable, x, y, y_pred, mode)
        by_name = dict(tap.named)
        for name, out_t in outputs[True][1].items():
            if name not in outputs[False][1] or name not in outputs[True][2]:
                continue
            out_i = outputs[False][1][name]
            a = tf.cast(out_t, tf.float32)
            diff = tf.norm(tf.reshape(a - tf.cast(out_i, tf.float32), [-1]))
            drift = diff / tf.maximum(tf.norm(tf.reshape(a, [-1])), 1e-12)
            mean, var, _ = outputs[True][2][name]
            layer = by_name[name]
            per_layer[name] = (mean, var, ops.convert_to_tensor(layer.moving_mean),
                               ops.convert_to_tensor(layer.moving_variance), drift)
        return metrics[True], metrics[False], per_layer

    def _loss_and_metrics(self, trainable, non_trainable, x, y, y_pred, training):
        from keras import ops

        model = self.model
        out = {}
        loss, _ = model.stateless_compute_loss(trainable, non_trainable,
                                               [v.value for v in model.metrics_variables],
                                               x, y, y_pred, training=training)
        out["loss"] = loss
        compiled = getattr(model, "_compile_metrics", None)
        if compiled is not None and compiled.built:
            state = compiled.stateless_update_state([ops.zeros_like(v.value) for v in compiled.variables], y, y_pred)
            for k, v in compiled.stateless_result(state).items():
                out[k] = v
        return out

    def run(self) -> ProbeResult:
        with self.tap, population._quiet_retracing():
            train, inference, per_layer = self._fn(self.x, self.y)
        scalar = lambda d: {k: float(np.asarray(v)) for k, v in d.items() if np.asarray(v).size == 1}  # noqa: E731
        layers = {}
        for name, (mean, var, mm, mv, drift) in per_layer.items():
            f64 = lambda t: np.asarray(t, np.float64).reshape(-1)  # noqa: E731
            layers[name] = ProbeLayer(f64(mean), f64(var), f64(mm), f64(mv), float(drift))
        return ProbeResult(scalar(train), scalar(inference), layers)


def layer_series(info, layer: ProbeLayer) -> dict:
    """The :data:`metadata.PROBE_SERIES` values of one layer."""
    return quantities.probe_series(info.epsilon, layer.probe_mean, layer.probe_var, layer.moving_mean,
                                   layer.moving_var, layer.output_drift)
