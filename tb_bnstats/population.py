"""Population statistics of BatchNormalization layers ("PreciseBN") and
recalibration of the moving averages from them.

The moving averages a BN layer uses at inference are exponential averages of
batch moments taken while the weights were changing, and they start from
(0, 1). PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; the
idea of fvcore's ``precise_bn``) replaces them, after training, with plain
averages over many batches taken with the final, fixed weights.

Per channel, each batch ``b`` gives ``n_b`` samples with mean ``mu_b`` and
(biased) variance ``var_b``. The population moments over all the samples seen
are, by the law of total variance, weighting each batch by its sample count::

    mean = sum(n_b mu_b) / N
    var  = sum(n_b (mu_b**2 + var_b)) / N - mean**2    (N = sum n_b)

:func:`tb_bnstats.quantities.pool_moments` computes exactly this, in the
numerically stable pairwise form (Chan et al. 1979): the same number without
the cancellation of ``E[x**2] - E[x]**2`` when the mean is large against the
spread. ``n_b`` is the number of values per channel in the batch (batch size
times spatial positions; the unmasked count with a mask).

How the moments are taken, without changing the model: the model runs through
Keras' ``stateless_call`` (every variable assignment -- moving averages, RNG
seed state -- goes into a scope that is thrown away), with each BN layer
temporarily wrapped to run in training mode and to hand out the exact
``(mean, variance)`` Keras' own ``_moments`` computes from the layer's input.
Upstream BN layers normalize with batch moments, as in training and in
PreciseBN. Other layers (Dropout, GaussianNoise...) run in inference mode by
default (``training=False``), so the statistics are those inference will see
-- which also removes dropout's "variance shift" (Li et al., CVPR 2019); pass
``training=True`` for fvcore's behaviour (everything in training mode).
Frozen layers (``trainable=False``) keep normalizing with their moving
averages; their input moments are still measured.

``recalibrate`` writes the result into ``moving_mean`` / ``moving_variance``
(and ``moving_stddev = sqrt(var + eps)`` for ``renorm=True`` layers, whose
moving variance Keras derives from it) as one transaction: if anything raises
before it returns -- a data generator, a ``KeyboardInterrupt`` -- every
variable it touched is restored bit for bit.
"""

import dataclasses
from typing import Dict, List, Optional

import numpy as np

from tb_bnstats import quantities

DEFAULT_NUM_SAMPLES = 4096  # DESIGN.md §3: near-optimal with 10^3-10^4 samples


@dataclasses.dataclass
class LayerPopulation:
    """Population moments of one BN layer's input (float64 per channel)."""

    name: str
    mean: np.ndarray
    var: np.ndarray
    count: float  # values per channel pooled (samples x positions)
    batches: int
    samples: int  # examples (batch rows) seen
    trainable: bool


# -- data ----------------------------------------------------------------------


def _first_leaf(x):
    while isinstance(x, (dict, list, tuple)):
        x = next(iter(x.values())) if isinstance(x, dict) else x[0]
    return x


def _num_rows(x):
    return int(_first_leaf(x).shape[0])


def _split_element(element):
    """A batch as given by a dataset or generator: ``x``, ``(x,)``, ``(x, y)``
    or ``(x, y, sample_weight)``; a dict is ``x``."""
    if isinstance(element, (tuple, list)):
        if len(element) == 0:
            raise ValueError("empty batch")
        return element[0], (element[1] if len(element) > 1 else None)
    return element, None


def _slice(x, idx):
    if isinstance(x, dict):
        return {k: _slice(v, idx) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_slice(v, idx) for v in x)
    return np.asarray(x)[idx]


def validate_data(data, name="data"):
    """Raises ValueError unless ``data`` can give batches: ``x``, ``(x, y)``
    or ``(x, y, sample_weight)`` arrays with the same number of rows (>= 1),
    or an iterable of batches (``tf.data.Dataset``, ``PyDataset``, a list of
    batches). ``name`` is the argument named in the message."""
    array_like = lambda a: hasattr(a, "shape") and hasattr(a, "dtype")  # noqa: E731
    if isinstance(data, (str, bytes)) or np.isscalar(data):
        raise ValueError(f"{name} must be arrays (x, y) or a dataset of batches, got {type(data).__name__}")
    if array_like(data) or (isinstance(data, tuple) and data and array_like(data[0])):
        parts = data if isinstance(data, tuple) else (data,)
        if len(parts) > 3 or not all(array_like(p) and len(p.shape) >= 1 for p in parts):
            raise ValueError(f"{name} as arrays must be x, (x, y) or (x, y, sample_weight), each with a batch axis")
        rows = {int(p.shape[0]) for p in parts}
        if len(rows) != 1 or 0 in rows:
            raise ValueError(f"{name} arrays must have the same number of rows (>= 1), got {sorted(rows)}")
        return
    if isinstance(data, dict) or not hasattr(data, "__iter__"):
        raise ValueError(f"{name} must be arrays (x, y) or an iterable of (x, y) batches, got {type(data).__name__}")


def iter_batches(data, batch_size=32, shuffle=False, seed=0):
    """Yields ``(x, y_or_None)`` batches from ``data``:

    * an array, a tensor or a dict of arrays: ``x``, cut into ``batch_size`` rows;
    * a tuple ``(x, y)`` or ``(x, y, sample_weight)`` of arrays: the same;
    * anything else iterable -- a batched ``tf.data.Dataset``, a
      ``keras.utils.PyDataset``, a generator, a list of batches -- yields batches
      as they come (``x`` or ``(x, y[, w])``).

    ``shuffle`` permutes array rows (with ``seed``) before batching.
    """
    import keras

    array_like = lambda a: hasattr(a, "shape") and hasattr(a, "dtype")  # noqa: E731
    x = y = None
    if array_like(data) or (isinstance(data, dict) and all(array_like(v) for v in data.values())):
        x = data
    elif isinstance(data, tuple) and data and (array_like(data[0]) or isinstance(data[0], dict)):
        x, y = data[0], (data[1] if len(data) > 1 else None)
    if x is not None:
        n = _num_rows(x)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield _slice(x, idx), (None if y is None else np.asarray(y)[idx])
        return
    if isinstance(data, keras.utils.PyDataset):
        for i in range(len(data)):
            yield _split_element(data[i])
        return
    for element in data:
        yield _split_element(element)


# -- capture of BN input moments -------------------------------------------------


class _MomentTap:
    """Temporarily wraps the ``call`` of each BN layer: measures the moments
    of its input with the layer's own ``_moments`` (the class method, past any
    instance wrapper such as tb_bnstats' capture, whose counters must not
    move) and calls the layer with ``training=True`` (``force_training=False``:
    with the mode the caller passes). While ``outputs`` is a dict it also
    receives each layer's output. Restores the layers' attributes exactly on
    exit."""

    def __init__(self, named_layers, force_training=True):
        self.named = named_layers
        self.force_training = bool(force_training)
        self.sink = None
        self.outputs = None
        self._saved = []

    def __enter__(self):
        from keras import backend, ops

        for name, layer in self.named:
            saved = {attr: layer.__dict__[attr] for attr in ("call", "_moments") if attr in layer.__dict__}
            self._saved.append((layer, saved))
            previous_call = layer.call
            class_moments = type(layer)._moments

            def call(inputs, training=None, mask=None, _name=name, _layer=layer, _call=previous_call,
                     _moments=class_moments):
                if self.sink is not None:
                    x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
                    mean, var = _moments(_layer, x, mask)
                    channels = int(_layer.moving_mean.shape[0])
                    if mask is None:
                        count = ops.cast(ops.size(x) // channels, "float32")
                    else:  # Keras' mask covers every axis but the channels
                        count = ops.sum(ops.cast(mask, "float32"))
                    self.sink[_name] = (ops.reshape(mean, [channels]), ops.reshape(var, [channels]), count)
                out = _call(inputs, training=True if self.force_training else training, mask=mask)
                if self.outputs is not None:
                    self.outputs[_name] = out
                return out

            layer.call = call
            # The training branch calls self._moments: bypass instance wrappers.
            layer._moments = class_moments.__get__(layer)
        return self

    def __exit__(self, *exc):
        for layer, saved in self._saved:
            for attr in ("call", "_moments"):
                if attr in saved:
                    layer.__dict__[attr] = saved[attr]
                else:
                    layer.__dict__.pop(attr, None)
        self._saved = []
        return False


class _StatelessRunner:
    """Runs ``model`` on batches through ``stateless_call``, threading the
    non-trainable state (seed generators, BN averages) from batch to batch in
    host-side tensors that are never assigned to the model."""

    def __init__(self, model, training, tap=None):
        import tensorflow as tf

        self.model, self.training, self.tap = model, bool(training), tap
        self.trainable = [v.value for v in model.trainable_variables]
        self.state = [tf.identity(v.value) for v in model.non_trainable_variables]

        def forward(x, state):
            if tap is not None:
                tap.sink = {}
            try:
                out, new_state = model.stateless_call(self.trainable, list(state), x, training=self.training)
                moments = dict(tap.sink) if tap is not None else {}
            finally:
                if tap is not None:
                    tap.sink = None
            return out, new_state, moments

        self._forward = tf.function(forward, reduce_retracing=True)

    def __call__(self, x):
        import tensorflow as tf

        x = tf.nest.map_structure(tf.convert_to_tensor, x)
        with _quiet_retracing():
            out, new_state, moments = self._forward(x, self.state)
        self.state = list(new_state)
        return out, moments


class _quiet_retracing:
    """Each call makes its own tf.function (the tap must be traced in): keep
    TensorFlow's "excessive retracing" warning about them out of the way."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("tensorflow")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False


def _bn_layers(model):
    from tb_bnstats.capture.keras_capture import find_batchnorm_layers

    if not model.built:
        raise ValueError("the model is not built: call it on data (or fit it) first")
    return find_batchnorm_layers(model)


def _population_and_probe(model, data, num_samples, batch_size, training, shuffle, seed, probe_samples,
                          include_frozen=True):
    named = _bn_layers(model)
    if not include_frozen:
        named = [(n, l) for n, l in named if l.trainable]
    acc = {}
    probe = []
    seen_rows = 0
    with _MomentTap(named) as tap:
        runner = _StatelessRunner(model, training=training, tap=tap)
        for x, y in iter_batches(data, batch_size=batch_size, shuffle=shuffle, seed=seed):
            if seen_rows >= num_samples:
                break
            rows = _num_rows(x)
            _, moments = runner(x)
            for name, (mean, var, count) in moments.items():
                acc.setdefault(name, []).append((float(count), np.asarray(mean, np.float64), np.asarray(var, np.float64)))
            if sum(_num_rows(px) for px, _ in probe) < probe_samples:
                probe.append((x, y))
            seen_rows += rows
    if seen_rows == 0:
        raise ValueError("no data: the data gave no batch")
    trainable = {n: bool(l.trainable) for n, l in named}
    out = {}
    for name, _ in named:
        if name not in acc:
            continue  # the forward pass never ran this layer
        counts = np.array([c for c, _, _ in acc[name]])
        mean, var, count = quantities.pool_moments(counts, np.stack([m for _, m, _ in acc[name]]),
                                                   np.stack([v for _, _, v in acc[name]]))
        out[name] = LayerPopulation(name, mean, var, count, len(counts), seen_rows, trainable[name])
    return out, probe


def population_stats(model, data, num_samples=DEFAULT_NUM_SAMPLES, batch_size=32, training=False,
                     shuffle=False, seed=0) -> Dict[str, LayerPopulation]:
    """Population mean and variance of every BN layer's input ("PreciseBN").

    Returns ``{name: LayerPopulation}`` keyed by the names tb_bnstats logs
    (``keras_capture.find_batchnorm_layers``). The model is not changed: no
    variable is assigned (the forward passes run through ``stateless_call``).

    Args:
        model: a built Keras 3 model (TensorFlow backend).
        data: arrays, ``(x, y)``, a batched ``tf.data.Dataset``, a
            ``PyDataset`` or any iterable of batches (see :func:`iter_batches`).
            Use batches of the training batch size: upstream BN layers
            normalize each batch with its own moments, as in training.
        num_samples: stop once this many examples were seen (whole batches).
        batch_size: batch size used to cut arrays.
        training: mode of the non-BN layers (Dropout...). False (default):
            statistics of what inference sees. True: fvcore's choice.
        shuffle, seed: permute array rows before batching.
    """
    stats, _ = _population_and_probe(model, data, num_samples, batch_size, training, shuffle, seed, probe_samples=0)
    return stats


# -- recalibration -------------------------------------------------------------


@dataclasses.dataclass
class GapReport:
    """The same probe batches through the model with ``training=True`` and
    ``training=False``. ``loss_*``/``accuracy_*`` are None when unknown (no
    labels, or no loss to apply); ``agreement`` is the fraction of argmax
    predictions the two modes share (classification outputs), ``output_drift``
    the mean absolute output difference over the mean absolute train output."""

    samples: int
    loss_train_mode: Optional[float]
    loss_inference_mode: Optional[float]
    accuracy_train_mode: Optional[float]
    accuracy_inference_mode: Optional[float]
    agreement: Optional[float]
    output_drift: float

    @property
    def accuracy_gap(self):
        if self.accuracy_train_mode is None or self.accuracy_inference_mode is None:
            return None
        return self.accuracy_train_mode - self.accuracy_inference_mode


@dataclasses.dataclass
class RecalibrationReport:
    before: GapReport
    after: GapReport
    layers: Dict[str, LayerPopulation]
    skipped: List[str]  # frozen or never run
    samples: int

    def __str__(self):
        def line(label, g):
            acc = ("" if g.accuracy_gap is None else
                   f"accuracy train-mode {g.accuracy_train_mode:.3f} / inference-mode {g.accuracy_inference_mode:.3f}; ")
            loss = ("" if g.loss_train_mode is None else
                    f"loss {g.loss_train_mode:.4f} / {g.loss_inference_mode:.4f}; ")
            return f"  {label}: {acc}{loss}output drift {g.output_drift:.3f}"

        return "\n".join([f"recalibrated {len(self.layers)} BN layer(s) from {self.samples} samples"
                          + (f" (skipped: {', '.join(self.skipped)})" if self.skipped else ""),
                          line("before", self.before), line("after", self.after)])


def _loss_fn(model):
    import keras

    loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, (dict, list, tuple)):
        return None
    try:
        return keras.losses.get(loss) if isinstance(loss, str) else loss
    except Exception:  # noqa: BLE001
        return None


def _to_numpy(out):
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return np.asarray(out, np.float64)


def _accuracy(y, pred):
    y = np.asarray(y)
    if pred.ndim >= 2 and pred.shape[-1] > 1:
        labels = np.argmax(y, -1) if y.shape == pred.shape else y.reshape(pred.shape[:-1])
        return float(np.mean(np.argmax(pred, -1) == labels))
    return None


def gap_report(model, probe) -> GapReport:
    """Train/inference gap on ``probe`` (a list of ``(x, y_or_None)`` batches),
    without changing the model."""
    train_runner = _StatelessRunner(model, training=True)
    infer_runner = _StatelessRunner(model, training=False)
    loss_fn = _loss_fn(model)
    n = 0
    sums = dict(loss_t=0.0, loss_i=0.0, acc_t=0.0, acc_i=0.0, agree=0.0, drift=0.0, scale=0.0)
    have_loss = have_acc = have_agree = True
    for x, y in probe:
        out_t, _ = train_runner(x)
        out_i, _ = infer_runner(x)
        pt, pi = _to_numpy(out_t), _to_numpy(out_i)
        rows = pt.shape[0]
        n += rows
        sums["drift"] += np.abs(pt - pi).sum()
        sums["scale"] += np.abs(pt).sum()
        if pt.ndim >= 2 and pt.shape[-1] > 1:
            sums["agree"] += float(np.sum(np.argmax(pt, -1) == np.argmax(pi, -1)))
        else:
            have_agree = False
        if y is None:
            have_loss = have_acc = False
            continue
        try:
            sums["loss_t"] += float(loss_fn(y, out_t if not isinstance(out_t, (list, dict)) else pt)) * rows
            sums["loss_i"] += float(loss_fn(y, out_i if not isinstance(out_i, (list, dict)) else pi)) * rows
        except Exception:  # noqa: BLE001 - no usable loss: report accuracy only
            have_loss = False
        at, ai = _accuracy(y, pt), _accuracy(y, pi)
        if at is None:
            have_acc = False
        else:
            sums["acc_t"] += at * rows
            sums["acc_i"] += ai * rows
    if n == 0:
        raise ValueError("empty probe")
    have_loss = have_loss and loss_fn is not None
    return GapReport(
        samples=n,
        loss_train_mode=sums["loss_t"] / n if have_loss else None,
        loss_inference_mode=sums["loss_i"] / n if have_loss else None,
        accuracy_train_mode=sums["acc_t"] / n if have_acc else None,
        accuracy_inference_mode=sums["acc_i"] / n if have_acc else None,
        agreement=sums["agree"] / n if have_agree else None,
        output_drift=float(sums["drift"] / max(sums["scale"], 1e-12)),
    )


def _assignments(layer, pop):
    """``[(variable, new float array)]`` to write for one layer."""
    dtype = np.dtype(layer.moving_mean.dtype)
    out = [(layer.moving_mean, pop.mean.astype(dtype))]
    if getattr(layer, "renorm", False):
        std = np.sqrt(pop.var + layer.epsilon)
        out.append((layer.moving_stddev, std.astype(np.dtype(layer.moving_stddev.dtype))))
        # What Keras derives from the stddev: relu(std**2 - eps).
        out.append((layer.moving_variance, np.maximum(std * std - layer.epsilon, 0.0).astype(dtype)))
    else:
        out.append((layer.moving_variance, pop.var.astype(dtype)))
    return out


def recalibrate(model, data, num_samples=DEFAULT_NUM_SAMPLES, batch_size=32, training=False, shuffle=False,
                seed=0, probe=None, probe_samples=512, include_frozen=False) -> RecalibrationReport:
    """Replaces the moving averages of every BN layer with population
    statistics (:func:`population_stats`) and reports the train/inference gap
    before and after, on ``probe`` (``(x, y)`` arrays, or by default the first
    ``probe_samples`` examples of ``data``).

    Frozen layers (``trainable=False``) are left alone unless
    ``include_frozen=True``. All or nothing: if anything raises before this
    returns (the data, a ``KeyboardInterrupt``), every variable is restored
    bit for bit.

    Example::

        report = tb_bnstats.recalibrate(model, (x_train, y_train), num_samples=4096)
        print(report)   # accuracy train-mode 0.94 / inference-mode 0.12 -> 0.94 / 0.94
    """
    named = dict(_bn_layers(model))
    saved = []
    try:
        stats, seen_probe = _population_and_probe(model, data, num_samples, batch_size, training, shuffle, seed,
                                                  probe_samples, include_frozen=include_frozen)
        if probe is not None:
            seen_probe = list(iter_batches(probe, batch_size=batch_size))
        before = gap_report(model, seen_probe)
        writes = [w for name, pop in stats.items() for w in _assignments(named[name], pop)]
        saved = [(var, np.array(var.numpy(), copy=True)) for var, _ in writes]
        for var, value in writes:
            var.assign(value)
        after = gap_report(model, seen_probe)
    except BaseException:
        for var, value in reversed(saved):
            var.assign(value)
        raise
    skipped = [name for name in named if name not in stats]
    return RecalibrationReport(before, after, stats, skipped, next(iter(stats.values())).samples if stats else 0)


# -- checks on the live model ----------------------------------------------------


def diagnose_model(model, data, num_samples=2048, batch_size=32, run="model"):
    """Findings that need the model, not just the logs: S5, the variance
    shift of dropout before BN (Li et al., CVPR 2019).

    For every trainable BN layer, the population variance of its input is
    measured twice -- other layers in training mode (dropout on, as when the
    moving averages were collected) and in inference mode -- and BN004 is
    raised when training-mode batches are wider than inference-mode ones by
    more than ``THRESHOLDS["population_variance_shift"]`` (channel mean of the
    log ratio) and the moving variance sits with the training side: inference
    then divides by a too-large variance. Nothing in the model changes.
    Returns a list of :class:`tb_bnstats.diagnosis.Finding`.
    """
    from tb_bnstats import diagnosis

    named = dict(_bn_layers(model))
    inference = population_stats(model, data, num_samples, batch_size, training=False)
    train = population_stats(model, data, num_samples, batch_size, training=True)
    threshold = diagnosis.THRESHOLDS["population_variance_shift"]
    hits = []
    for name, layer in named.items():
        if name not in inference or name not in train or not layer.trainable:
            continue
        eps = float(layer.epsilon)
        moving = np.asarray(layer.moving_variance.numpy(), np.float64)
        shift = float(np.mean(quantities.log_var_ratio(train[name].var, inference[name].var, eps)))
        moving_vs_inference = float(np.mean(quantities.log_var_ratio(moving, inference[name].var, eps)))
        if shift > threshold and moving_vs_inference > threshold:
            hits.append((name, {"train_vs_inference_log_var_ratio": shift,
                                "moving_vs_inference_log_var_ratio": moving_vs_inference,
                                "samples": inference[name].samples}))
    if not hits:
        return []
    name, ev = hits[0]
    others = [n for n, _ in hits[1:]]
    message = (f"{name}: in training its input is {np.exp(ev['train_vs_inference_log_var_ratio']):.2f}x wider than at "
               f"inference (dropout or noise upstream), and the moving variance follows training "
               f"({np.exp(ev['moving_vs_inference_log_var_ratio']):.2f}x the inference-time variance): inference "
               f"outputs shrink. Fix: {diagnosis.CODES['BN004'][3]}." + (f" Also: {', '.join(others)}." if others else ""))
    return [diagnosis.Finding(code="BN004", severity="warning", scenario="S5", run=run, layers=[n for n, _ in hits],
                              evidence={n: e for n, e in hits}, message=message)]
