"""The batch moments a TensorFlow BN layer normalizes with, taken from its
input, for the layers whose kernel does not hand them out: tf_keras' fused
kernel (:mod:`tb_bnstats.frameworks.keras.capture.tf_keras`) and a graph's layers
(:mod:`tb_bnstats.frameworks.tf1.graph`); and the values per channel that
compare a batch variance with a moving average of Bessel-corrected ones."""


def channel_moments(inputs, axis):
    """``(mean, variance)`` per channel of ``inputs`` as float32 [C], over
    every axis but ``axis`` (the channels'): the biased variance, what BN in
    training mode normalizes with (``tf.nn.moments``)."""
    import tensorflow as tf

    x = tf.cast(inputs, tf.float32)
    rank = x.shape.rank
    axis %= rank
    mean, variance = tf.nn.moments(x, [i for i in range(rank) if i != axis])
    return tf.reshape(mean, [-1]), tf.reshape(variance, [-1])


def values_per_channel(inputs, channels):
    """``n``, the values per channel in ``inputs`` of ``channels`` channels
    (every axis but the channels'), as a float64 scalar tensor."""
    import tensorflow as tf

    return tf.cast(tf.size(inputs), tf.float64) / float(channels)
