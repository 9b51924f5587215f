"""Captures tf_keras (Keras 2: the ``tf-keras`` package, ``tf.keras`` under
``TF_USE_LEGACY_KERAS=1``) BatchNormalization moments inside the train step.

A tf_keras model trains on TensorFlow as a Keras 3 model on the TensorFlow
backend does: ``model.train_step`` traced into a ``tf.function``. So it uses
the TensorFlow capture (:mod:`tb_bnstats.frameworks.keras.capture.tensorflow`: the
train-step wrapper, the ring on the device, the drain) and differs only in
how a layer hands over its moments, because tf_keras' BatchNormalization
has its own kernels:

* non-fused (``fused=False``, 2-D inputs, ``renorm``, ``virtual_batch_size``):
  ``layer._moments(inputs, reduction_axes, keep_dims, mask)`` gives the
  exact moments the layer normalizes with; the wrapper hands them over.
  With a virtual batch size ("ghost batch norm") each ghost batch is
  normalized with its own moments and the moving averages take their mean
  over the ghost batches: that mean is what is logged, what the averages
  track.
* fused (the default for 4-D inputs): ``tf.compat.v1.nn.fused_batch_norm``
  computes the moments inside one kernel and, in a ``tf.function``, updates
  the moving averages itself (its outputs are the new averages, not the
  batch's moments). The wrapper takes ``tf.nn.moments`` of the same input
  (the biased variance: what the kernel normalized with). The kernel's
  moving variance averages the Bessel-corrected batch variance
  ``var_B * n / (n - 1)``: the layer is logged with
  ``moving_var_unbiased`` and its values per channel ``n``, so the batch
  variance is compared like with like
  (:func:`tb_bnstats.quantities.comparable_batch_var`).

A layer called in inference mode inside the train step (``training=False``,
or ``trainable=False``, which tf_keras runs in inference mode) hands over
the moments of what it saw, as "not updating", as under Keras 3.
"""

import functools
import sys

from tb_bnstats.frameworks import tensorflow_ops
from tb_bnstats.frameworks.keras import TF_KERAS, internals
from tb_bnstats.frameworks.keras.capture import hooks
from tb_bnstats.frameworks.keras.capture import tensorflow as tf_capture
from tb_bnstats.frameworks.keras.capture.layers import channels_of, find_batchnorm_layers


def is_tf_keras_model(model):
    """Whether ``model`` is a tf_keras model (``tf_keras`` already imported:
    nothing is imported here)."""
    module = sys.modules.get("tf_keras")
    return module is not None and isinstance(model, module.Model)


def batchnorm_classes():
    """tf_keras' BN classes: the base of ``tf.keras.layers.BatchNormalization``
    and of the ``tf.compat.v1.layers`` one."""
    return internals.tf_keras_batchnorm_classes()


def channel_axis(layer, rank):
    """The channel axis of a ``rank``-D input of ``layer`` (its ``axis``,
    one axis; tf_keras keeps it as a list)."""
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    return axis % rank


def channel_moments(layer, inputs):
    """:func:`tb_bnstats.frameworks.tensorflow_ops.channel_moments` of ``inputs`` on ``layer``'s channel axis."""
    return tensorflow_ops.channel_moments(inputs, channel_axis(layer, inputs.shape.rank))


def per_channel(layer, mean, variance):
    """The moments ``layer._moments`` returned, as [C]: kept dimensions
    dropped, and with a virtual batch size the mean over the ghost batches
    (what the moving averages are updated with)."""
    import tensorflow as tf

    channels = channels_of(layer)
    if mean.shape.rank and mean.shape.num_elements() == channels:
        return tf.reshape(mean, [channels]), tf.reshape(variance, [channels])
    flat = lambda t: tf.reduce_mean(tf.reshape(t, [-1, channels]), axis=0)  # noqa: E731 - [V, 1.., C] ghost batches
    return flat(mean), flat(variance)


class _LayerSlot(tf_capture._LayerSlot):
    """The TensorFlow slot; a fused layer's moving variance is unbiased."""

    framework = TF_KERAS

    def __init__(self, layer):
        super().__init__(layer)
        self.training_call = False  # the layer's call being run trains it (set by the call wrapper)

    @property
    def moving_var_unbiased(self):
        """Whether the layer runs the fused kernel: tf_keras decides in
        ``build`` (a subclassed model's layers are built at the first train
        step, after the slot is made), so it is read when the step is traced."""
        return bool(getattr(self.layer, "fused", False))


def instrument_layer(layer, slot):
    """Wraps ``layer.call``, ``layer._moments`` and
    ``layer._fused_batch_norm`` (module docstring); idempotent through the
    slot registry. The wrappers are not converted by AutoGraph: they branch
    on Python values only."""
    import tensorflow as tf

    original_call, original_moments = layer.call, internals.moments(layer)
    original_fused = internals.fused_batch_norm(layer)
    ag = tf.autograph.experimental.do_not_convert

    def keep(mean, variance, inputs):
        slot.keep(*per_channel(layer, mean, variance), True, inputs)

    @ag
    def _moments(inputs, reduction_axes, keep_dims, mask=None):
        mean, variance = original_moments(inputs, reduction_axes, keep_dims, mask=mask)
        if hooks.in_train_step() and slot.training_call:
            hooks.never_raise(keep, mean, variance, inputs)
        return mean, variance

    @ag
    def _fused_batch_norm(inputs, mask, training):
        if hooks.in_train_step() and slot.training_call:
            hooks.never_raise(lambda: keep(*channel_moments(layer, inputs), inputs))
        return original_fused(inputs, mask, training)

    def record_inference_mode(inputs):
        slot.ran()
        slot.keep(*channel_moments(layer, inputs), False, inputs)

    @ag
    @functools.wraps(original_call)
    def call(inputs, training=None, mask=None):
        trains = False
        if hooks.in_train_step():
            # tf_keras resolves training before call; trainable=False runs the layer in inference mode.
            trains = training is not False and training is not None and bool(layer.trainable)
            if trains:
                hooks.never_raise(slot.ran)
            else:
                hooks.never_raise(record_inference_mode, inputs)
        slot.training_call = trains
        try:
            return original_call(inputs, training=training, mask=mask)
        finally:
            slot.training_call = False

    layer.call = call
    internals.set_moments(layer, _moments)
    internals.set_fused_batch_norm(layer, _fused_batch_norm)


class TfKerasCapture(tf_capture.TensorFlowCapture):
    """Instruments a tf_keras ``model`` (idempotent) and drains its BN
    moments: a :class:`tb_bnstats.capture.Capture`, the TensorFlow capture
    with tf_keras' layers."""

    slot_class = _LayerSlot
    find_layers = staticmethod(lambda model: find_batchnorm_layers(model, batchnorm_classes()))
    instrument = staticmethod(instrument_layer)
