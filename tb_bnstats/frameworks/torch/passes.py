"""The PyTorch part of the measurements: forward passes of an ``nn.Module``
that change nothing in it.

:class:`ModePasses` puts the model in the mode a pass needs for as long as
it runs and then restores every module's ``training`` flag and every BN
module's ``track_running_stats`` exactly:

* BN modules in *batch* mode (``train()`` with ``track_running_stats=False``
  for the pass) normalize with the batch's own moments and write nothing:
  PyTorch passes no running buffers to the kernel then, and
  ``num_batches_tracked`` does not move;
* BN modules in *moving* mode (``eval()``) normalize with their running
  statistics, as at inference;
* the other modules are in ``train()`` or ``eval()`` as asked (Dropout on or
  off).

A forward hook per BN module hands out the biased moments of its input
(:func:`tb_bnstats.frameworks.torch.capture.modules.channel_moments`) and its output.
Passes run under ``torch.no_grad()`` and with torch's random generators
forked (``torch.random.fork_rng``), so training goes on with the random
numbers it would have had.

A BN module keeps normalizing with its running statistics in the
training-mode passes when it does so in training (:func:`kept_in_eval`):
when its affine parameters do not require gradients (``requires_grad=False``,
the usual way to freeze BN when fine-tuning: "frozen"), or when it is in
``eval()`` while the model is in ``train()`` (measured during training, the
model is in its training configuration). After ``model.eval()`` only the
first rule can tell.
"""

import contextlib

import numpy as np

from tb_bnstats import quantities
from tb_bnstats.frameworks.torch.capture import modules as bn_modules
from tb_bnstats.measure import data as batches
from tb_bnstats.measure.gap import ProbeLayer, ProbeResult


def bn_layers(model):
    """``[(name, module)]`` of the model's BN modules that keep running
    statistics, named as tb_bnstats logs them.

    Raises:
        ValueError: ``model`` is not a ``torch.nn.Module``.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return [(n, m) for n, m in bn_modules.find_batchnorm_modules(model) if bn_modules.tracks_running_stats(m)]


def averaged_model(model):
    """What tb_bnstats knows of ``model`` as an averaged copy of another
    model, or None: ``torch.optim.swa_utils.AveragedModel`` (SWA, and EMA
    through its ``multi_avg_fn``) averages the parameters only, unless
    ``use_buffers=True``; its BN buffers are copies of the trained model's
    (made at construction; recent PyTorch copies them again at each
    ``update_parameters``): statistics of other weights than the averaged
    ones, until ``torch.optim.swa_utils.update_bn`` recomputes them.

    Returns:
        ``{"kind": "AveragedModel", "use_buffers": bool, "averaged": int,
        "why": str}`` (``averaged``: ``n_averaged``), or None for another
        model (an EMA copy is a plain module: :func:`tb_bnstats.diagnose_model`
        takes ``averaged=True`` for it).
    """
    import torch

    if not isinstance(model, torch.optim.swa_utils.AveragedModel):
        return None
    use_buffers = bool(getattr(model, "use_buffers", False))
    averaged = int(model.n_averaged) if hasattr(model, "n_averaged") else 0
    why = ("AveragedModel(use_buffers=True) averages the buffers with the weights" if use_buffers else
           f"AveragedModel averages the parameters of {averaged} models but keeps copies of the trained "
           f"model's buffers, statistics of the weights last trained, not of the averaged ones; only update_bn "
           f"recomputes them")
    return {"kind": "AveragedModel", "use_buffers": use_buffers, "averaged": averaged, "why": why}


def is_frozen(module):
    """Whether the module's affine parameters are frozen (``requires_grad=False``)."""
    weight = getattr(module, "weight", None)
    return weight is not None and not weight.requires_grad


def kept_in_eval(model, module):
    """Whether a BN module normalizes with its running statistics in the
    training-mode passes too: frozen (:func:`is_frozen`), or in ``eval()``
    while ``model`` is in ``train()`` (the model is in its training
    configuration then, a module kept in ``eval()`` on purpose)."""
    return is_frozen(module) or (model.training and not module.training)


def moving_statistics(module):
    """``(running_mean, running_var, eps)`` of a BN module (float64)."""
    return (module.running_mean.detach().double().cpu().numpy(), module.running_var.detach().double().cpu().numpy(),
            bn_modules.eps_of(module))


def model_device(model):
    """The device of the model's first parameter or buffer (CPU without any)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_tensors(x, device):
    """A batch (array, tensor or structure of them) as torch tensors on ``device``."""
    import torch

    if isinstance(x, dict):
        return {k: to_tensors(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_tensors(v, device) for v in x)
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device)


def to_numpy(x):
    """A tensor (any device) as a numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _call(model, x):
    return model(**x) if isinstance(x, dict) else model(x)


class ModePasses:
    """Forward passes of ``model`` with its BN modules ``named`` in a given
    mode, handing out their input moments and outputs (module docstring).

    Args:
        model: the ``nn.Module``.
        named: ``[(name, bn_module)]`` to measure (every BN module of the
            model is put in the pass's mode, measured or not).
    """

    def __init__(self, model, named):
        self.model, self.named = model, list(named)
        self.bn_modules = [m for _, m in bn_modules.find_batchnorm_modules(model)]
        self.device = model_device(model)
        self.moments, self.outputs = {}, {}

    def run(self, x, training, bn_batch, frozen_batch_mode=False):
        """One forward pass of ``x``.

        Args:
            x: the batch.
            training: mode of the modules that are not BN (Dropout...).
            bn_batch: BN modules (but frozen ones) normalize with batch
                moments (True) or their running statistics (False).
            frozen_batch_mode: with ``bn_batch``, the frozen ones too (as
                they will once recalibrated).

        Returns:
            ``(output, {name: (mean [C], var [C], n)}, {name: bn output})``
            as tensors.
        """
        import torch

        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        tracking = [(m, m.track_running_stats) for m in self.bn_modules if not bn_modules.is_frozen_batchnorm(m)]
        kept = {id(m) for m in self.bn_modules if kept_in_eval(model, m) and not frozen_batch_mode}
        self.moments, self.outputs = {}, {}
        handles = [m.register_forward_hook(self._hook(name)) for name, m in self.named]
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                model.train(bool(training))
                for m in self.bn_modules:
                    if bn_batch and id(m) not in kept and not bn_modules.is_frozen_batchnorm(m):
                        m.train()
                        m.track_running_stats = False  # batch moments, no running buffer written
                    else:
                        m.eval()
                out = _call(model, to_tensors(x, self.device))
        finally:
            for handle in handles:
                handle.remove()
            for m, flag in tracking:
                m.track_running_stats = flag
            for m, flag in modes:
                m.training = flag
        return out, self.moments, self.outputs

    def _hook(self, name):
        def keep(module, args, output):
            self.moments[name] = bn_modules.channel_moments(args[0])
            self.outputs[name] = output.detach()

        return keep


@contextlib.contextmanager
def moment_passes(model, named, training, frozen_batch_mode=False):
    """The population measurement's passes: BN modules normalize with batch
    moments (frozen ones too with ``frozen_batch_mode``), other modules in
    ``training`` mode.

    Yields:
        ``run(x) -> {name: (mean [C], var [C], n)}`` as numpy float64.
    """
    passes = ModePasses(model, named)

    def run(x):
        _, moments, _ = passes.run(x, training=training, bn_batch=True, frozen_batch_mode=frozen_batch_mode)
        return {name: (np.asarray(to_numpy(m), np.float64), np.asarray(to_numpy(v), np.float64), float(n))
                for name, (m, v, n) in moments.items()}

    yield run


def write_population(module, pop):
    """Writes population statistics into a BN module's running buffers, in
    PyTorch's convention (``running_var`` holds the Bessel-corrected variance
    ``var * N / (N - 1)``).

    Returns:
        ``undo()``, which puts the buffers back bit for bit.
    """
    import torch

    saved = (module.running_mean.detach().clone(), module.running_var.detach().clone())
    n = float(pop.count)
    var = pop.var * (n / (n - 1.0) if n > 1 else 1.0)

    def undo():
        with torch.no_grad():
            module.running_mean.copy_(saved[0])
            module.running_var.copy_(saved[1])

    try:
        with torch.no_grad():
            module.running_mean.copy_(torch.as_tensor(pop.mean, dtype=module.running_mean.dtype))
            module.running_var.copy_(torch.as_tensor(var, dtype=module.running_var.dtype))
    except BaseException:
        undo()
        raise
    return undo


class GapProbe:
    """Runs batches through ``model`` in training mode (``model.train()``:
    BN with batch moments, Dropout on) and in inference mode
    (``model.eval()``) without changing anything.

    Args:
        model: the ``nn.Module``.
        x, y: an optional fixed batch for :meth:`run` without arguments.
        named_layers: ``[(name, bn_module)]`` to measure.
        loss_fn: ``loss_fn(output, y) -> scalar tensor`` for the ``loss``
            of both modes (None: no loss).
    """

    def __init__(self, model, x=None, y=None, named_layers=(), loss_fn=None):
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.passes = ModePasses(model, named_layers)

    def run(self, x=None, y=None) -> ProbeResult:
        """Both modes on ``(x, y)``, or on the fixed batch.

        Returns:
            :class:`tb_bnstats.measure.gap.ProbeResult`.
        """
        if x is None:
            x, y = self.x, self.y
        out_t, moments, bn_out_t = self.passes.run(x, training=True, bn_batch=True)
        out_i, _, bn_out_i = self.passes.run(x, training=False, bn_batch=False)
        y_t, y_i = (to_numpy(batches.first_leaf(o)).astype(np.float64) for o in (out_t, out_i))
        metrics = {True: self._metrics(out_t, y, y_t), False: self._metrics(out_i, y, y_i)}
        layers = {}
        for name, module in self.passes.named:
            if name not in moments or name not in bn_out_i:
                continue
            mean, var, n = moments[name]
            mm, mv, _ = moving_statistics(module)
            var = quantities.comparable_batch_var(to_numpy(var), n, moving_var_unbiased=True)
            norms = quantities.squared_norms(to_numpy(bn_out_t[name]), to_numpy(bn_out_i[name]))
            drift = quantities.output_drift(*norms)
            layers[name] = ProbeLayer(np.asarray(to_numpy(mean), np.float64), var, mm, mv, drift)
        return ProbeResult(metrics[True], metrics[False], layers, y_t, y_i, quantities.squared_norms(y_t, y_i))

    def _metrics(self, out, y, y_np):
        if y is None:
            return {}
        import torch

        out_metrics = {}
        if self.loss_fn is not None:
            with torch.no_grad():
                target = to_tensors(y, self.passes.device)
                out_metrics["loss"] = float(self.loss_fn(batches.first_leaf(out), target))
        accuracy = quantities.argmax_accuracy(to_numpy(y), y_np)
        if accuracy is not None:
            out_metrics["accuracy"] = accuracy
        return out_metrics
