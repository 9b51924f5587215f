"""Toy's layers: a BN that normalizes with its batch's moments in training
and keeps ``running = keep * running + (1 - keep) * batch`` (``keep`` is the
weight of the old average, the log format's convention), and a sequential
model. The capture watches a BN through ``observers``, called with the
moments it normalized with."""

import numpy as np


class ToyBatchNorm:
    def __init__(self, channels, keep=0.9, eps=1e-5):
        self.keep, self.eps = keep, eps
        self.running_mean, self.running_var = np.zeros(channels), np.ones(channels)
        self.updates, self.observers = 0, []

    def __call__(self, x, training=True):
        if not training:
            return (x - self.running_mean) / np.sqrt(self.running_var + self.eps)
        mean, var = x.mean(axis=0), x.var(axis=0)
        self.running_mean = self.keep * self.running_mean + (1 - self.keep) * mean
        self.running_var = self.keep * self.running_var + (1 - self.keep) * var
        self.updates += 1
        for observe in self.observers:
            observe(self, mean, var, x.shape[0])
        return (x - mean) / np.sqrt(var + self.eps)


class ToyModel:
    def __init__(self, layers):
        self.layers = layers  # [(name, layer)]

    def __call__(self, x, training=True):
        for _, layer in self.layers:
            x = layer(x, training=training) if isinstance(layer, ToyBatchNorm) else layer(x)
        return x
