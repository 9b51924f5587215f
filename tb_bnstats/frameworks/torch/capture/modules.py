"""Finding the BatchNorm modules of a PyTorch model and describing them.

PyTorch's conventions, and how the log format (Keras' conventions, see
:class:`tb_bnstats.format.metadata.LayerInfo`) takes them:

* ``momentum`` is the weight of the *new* batch:
  ``running = (1 - p) * running + p * batch``. The format's momentum is the
  weight kept on the old average, ``m = 1 - p`` (PyTorch's default 0.1 is
  0.9). ``momentum=None`` is a cumulative average, ``running = mean of every
  batch so far`` (``p = 1 / num_batches_tracked``): ``None`` in the format too.
* ``running_var`` averages the Bessel-corrected batch variance
  ``var_B * n / (n - 1)`` (``n`` values per channel), while the batch is
  normalized with the biased ``var_B``: ``moving_var_unbiased=True``, and the
  capture keeps ``n`` per step (:func:`tb_bnstats.quantities.comparable_batch_var`).
* ``num_batches_tracked`` counts the updates (``t``); it is in the
  ``state_dict``, so it goes on across a restore.
* A module updates its running statistics only in ``train()`` mode with
  ``track_running_stats=True``. In ``eval()`` it normalizes with them (and
  does not update: "not updating", as a Keras layer with
  ``training=False``). With ``track_running_stats=False`` it has no running
  statistics and normalizes with batch moments in ``eval()`` too: nothing to
  compare, such a module is not logged.
* The initial running statistics are 0 and 1 (``reset_running_stats``).
* Frozen by construction: ``torchvision.ops.misc.FrozenBatchNorm2d`` (the BN
  of torchvision's detection models, detectron2-style backbones, timm's
  ``freeze_batch_norm_2d``) is no ``_BatchNorm``. It is found by duck typing
  (:func:`is_frozen_batchnorm`): a module whose *buffers* are ``weight``,
  ``bias``, ``running_mean`` and ``running_var`` (1-D, one value per
  channel), with no ``momentum`` attribute and no ``num_batches_tracked``.
  It always normalizes with those buffers and never changes them: it is
  logged as frozen on purpose (``frozen=True``, no update, momentum None),
  its batch moments computed from its input.
"""

from tb_bnstats.format.metadata import LayerInfo
from tb_bnstats.frameworks.torch import PYTORCH

FROZEN_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def is_frozen_batchnorm(module):
    """Whether ``module`` is a BN module frozen by construction, such as
    ``torchvision.ops.misc.FrozenBatchNorm2d``: not a ``_BatchNorm``, its
    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers
    (not parameters) of one shape ``[C]``, and it has no ``momentum`` (it
    never updates them)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    if isinstance(module, _BatchNorm) or hasattr(module, "momentum"):
        return False
    buffers = getattr(module, "_buffers", {})
    tensors = [buffers.get(name) for name in FROZEN_BN_BUFFERS]
    if any(t is None for t in tensors):
        return False
    return all(t.dim() == 1 and t.shape == tensors[0].shape for t in tensors)


def is_batchnorm(module):
    """Whether ``module`` is a BatchNorm module: any subclass of
    ``torch.nn.modules.batchnorm._BatchNorm`` (``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``, the lazy ones, timm-style subclasses), or one frozen
    by construction (:func:`is_frozen_batchnorm`). Instance and group norms
    are not (they keep no batch statistics)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(module, _BatchNorm) or is_frozen_batchnorm(module)


def find_batchnorm_modules(model):
    """``[(name, module)]`` of every BN module of ``model`` at any depth,
    named by its module path (``layer1.0.bn1``; ``model`` itself, when it is
    one, is ``"bn"``), in registration order, each module once (a module
    shared by two paths keeps the first, as ``named_modules`` does)."""
    return [(name or "bn", module) for name, module in model.named_modules() if is_batchnorm(module)]


def momentum_of(module):
    """The module's ``momentum`` (None for one frozen by construction)."""
    return getattr(module, "momentum", None)


def eps_of(module):
    """The module's ``eps`` (torchvision's ``FrozenBatchNorm2d`` default,
    1e-5, for a frozen one without the attribute)."""
    return float(getattr(module, "eps", 1e-5))


def updates_running_stats(module):
    """Whether a forward in ``train()`` updates the module's running
    statistics (False for one frozen by construction)."""
    return not is_frozen_batchnorm(module) and bool(module.track_running_stats)


def affine_requires_grad(module):
    """Whether any of the module's own parameters requires a gradient (a
    frozen-by-construction module has none: its affine values are buffers)."""
    return any(p.requires_grad for p in module.parameters(recurse=False))


def keras_momentum(momentum):
    """PyTorch's ``momentum`` (weight of the new batch; None: cumulative) in
    the log format's convention (weight kept on the old average)."""
    return None if momentum is None else 1.0 - float(momentum)


def tracks_running_stats(module):
    """Whether the module keeps running statistics (``track_running_stats``
    and initialized buffers: a lazy module has none before its first forward)."""
    from torch.nn.parameter import UninitializedBuffer

    mean = getattr(module, "running_mean", None)
    if is_frozen_batchnorm(module):
        return True
    return bool(module.track_running_stats) and mean is not None and not isinstance(mean, UninitializedBuffer)


def layer_info(name, module, depth, updating, replicas=1, moving_per_replica=False, batch_samples=0):
    """The :class:`~tb_bnstats.format.metadata.LayerInfo` of one BN module.

    Args:
        name: its module path.
        module: the module (its running statistics initialized).
        depth: its position in the forward order.
        updating: whether the training forward updated its running
            statistics (``train()`` mode); False is logged as
            ``trainable=False`` ("not updating"), and as ``frozen`` (on
            purpose) when none of its parameters requires a gradient
            either: ``eval()`` with ``requires_grad_(False)`` is how a
            PyTorch user freezes a BN module.
        replicas: the DDP ranks it trains on (1 in one process).
        moving_per_replica: each rank keeps its own running statistics
            (DDP without its buffer sync: ``broadcast_buffers=False``).
        batch_samples: examples in its training batch (0: unknown).

    ``affine_frozen`` is set when the module updated its running
    statistics while none of its parameters required a gradient: "frozen"
    with ``requires_grad_(False)`` but left in ``train()``. A module frozen
    by construction (:func:`is_frozen_batchnorm`) is ``frozen``.
    """
    import torch

    trains_affine = affine_requires_grad(module)
    return LayerInfo(
        name=name, channels=int(module.running_mean.numel()), momentum=keras_momentum(momentum_of(module)),
        epsilon=eps_of(module), init_mean=0.0, init_var=1.0, moving_var_unbiased=True, depth=int(depth),
        layer_class=type(module).__name__, framework=PYTORCH, trainable=bool(updating),
        synchronized=isinstance(module, torch.nn.SyncBatchNorm),
        frozen=is_frozen_batchnorm(module) or (not updating and not trains_affine),
        replicas=int(replicas), moving_per_replica=bool(moving_per_replica),
        affine_frozen=bool(updating) and not trains_affine and not is_frozen_batchnorm(module),
        batch_samples=int(batch_samples))


# Below this momentum (PyTorch's p), the moments are computed from the input:
# read off the update, their error is about 2 ulp(running) / p (1e-6 relative
# at p = 0.1, 2.4e-6 at 0.05).
MIN_MOMENTUM_TO_INVERT = 0.05


def moments_from_update(module):
    """Whether this forward's batch moments can be read off the module's
    running-statistics update: it updates them (``train()``,
    ``track_running_stats``) with an exponential momentum >=
    :data:`MIN_MOMENTUM_TO_INVERT`, in float32 or float64 buffers."""
    import torch

    p = momentum_of(module)
    return (module.training and updates_running_stats(module) and tracks_running_stats(module)
            and p is not None and p >= MIN_MOMENTUM_TO_INVERT
            and module.running_mean.dtype in (torch.float32, torch.float64))


def moments_of_update(module, mean_before, var_before, x):
    """The batch moments a training forward normalized with, from its update
    of the running statistics (PyTorch's ``running = running + p (batch -
    running)`` with the Bessel-corrected variance, inverted):

        mean  = before_mean + (running_mean - before_mean) / p
        var_u = before_var  + (running_var  - before_var)  / p
        var   = var_u * (n - 1) / n      (the biased variance, n values per channel)

    The same numbers the kernel computed, to float32 rounding of the buffers
    divided by ``p`` (:data:`MIN_MOMENTUM_TO_INVERT`).

    Returns:
        ``(mean [C], var [C], n)`` as :func:`channel_moments`.
    """
    p = float(module.momentum)
    n = x.numel() // x.shape[1]
    mean = (mean_before + (module.running_mean.detach() - mean_before) / p).float()
    unbiased = (var_before + (module.running_var.detach() - var_before) / p).float()
    return mean, unbiased * ((n - 1) / n), n


def channel_moments(x):
    """The biased per-channel mean and variance of a BN input ``x`` [N, C,
    ...] over every axis but 1 (what the module normalizes with), in float32
    at least, without gradients, and the number of values per channel.

    Computed with ``torch.batch_norm_update_stats`` (without running
    buffers: it only computes), the one-pass Welford reduction PyTorch's own
    BN kernels use, about 4x cheaper on a CPU than ``torch.var_mean`` over
    the strided axes; ``torch.var_mean`` where the device has no kernel for it.

    Returns:
        ``(mean [C], var [C], n)`` (``n`` a Python int).
    """
    import torch

    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # float16 / bfloat16 under autocast: the moments in float32
    n = x.numel() // x.shape[1]
    try:
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
    except (RuntimeError, NotImplementedError):
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
    return mean, var, n
