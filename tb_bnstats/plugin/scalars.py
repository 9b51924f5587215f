"""The loss chart's other sources: scalars (TensorBoard's "scalars" plugin)
that another writer put beside or into a tb_bnstats run, on the run's step
axis.

* :func:`keras_series`: Keras' own TensorBoard callback, in ``<run>/train``
  and ``<run>/validation`` (or siblings of the run's parent), ``batch_*`` and
  ``epoch_*`` tags.
* :func:`own_series`: scalars written into the run's directory itself, as
  ``torch.utils.tensorboard.SummaryWriter(log_dir)`` does next to
  ``BNStatsMonitor(model, log_dir)`` (``add_scalar("loss/train", v, step)``),
  or ``tf.summary.scalar`` in a custom loop: any tag, its step the writer's
  global step.

The run's own metrics (``metric/<split>/<name>``, BNStatsCallback's and
BNStatsMonitor's ``log_metrics``) are of the bn_stats plugin, never of
"scalars", so nothing is read twice.
"""

import posixpath
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorboard import errors
from tensorboard.data import provider

from tb_bnstats.format.records import Series
from tb_bnstats.read.reader import READ_ALL

# {run: {tag: TensorBoard's time series of it}}, as list_scalars answers.
Listing = Mapping[str, Mapping[str, Any]]

SCALARS_PLUGIN = "scalars"
# The source of scalars written into the run itself (the legend says it).
OWN_SOURCE = "run's own scalars"
# A tag naming a held-out split: a word val/valid/validation/test/eval
# between separators ("loss/val", "val_loss", "Accuracy/test", "eval/loss").
_VAL_WORD = re.compile(r"(?:^|[/_\-. ])(?:val|valid|validation|test|eval)(?:$|[/_\-. ])", re.IGNORECASE)


def split_of(tag: str) -> str:
    """``"val"`` when a tag names validation (``val``, ``valid``,
    ``validation``, ``test``, ``eval`` as a word of it), else ``"train"``."""
    return "val" if _VAL_WORD.search(tag) else "train"


def listing(data_provider: Any, ctx: Any, eid: str) -> Listing:
    """``{run: {tag: ...}}`` of every "scalars" tag (empty when there are none)."""
    try:
        return data_provider.list_scalars(ctx, experiment_id=eid, plugin_name=SCALARS_PLUGIN)
    except errors.PublicError:
        return {}


def _read(data_provider: Any, ctx: Any, eid: str, run: str, tags: list[str]) -> dict[str, Series]:
    """``{tag: (steps, values)}``: every point of ``run``'s scalars ``tags``, tags in order."""
    result = data_provider.read_scalars(
        ctx, experiment_id=eid, plugin_name=SCALARS_PLUGIN, downsample=READ_ALL,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags)).get(run, {})
    return {tag: (np.array([p.step for p in result[tag]], np.int64),
                  np.array([p.value for p in result[tag]], np.float64)) for tag in sorted(result)}


def own_series(data_provider: Any, ctx: Any, eid: str, run: str, listed: Listing) -> list[dict[str, Any]]:
    """The scalars written into ``run``'s directory itself (e.g. by
    ``torch.utils.tensorboard.SummaryWriter(log_dir)``): every tag, its step
    the writer's global step (aligned ``"step"``), split ``"val"`` when the
    tag names validation (:func:`split_of`), as series dicts of the ``/loss``
    route (``source``: :data:`OWN_SOURCE`). ``listed``: :func:`listing`."""
    tags = sorted(listed.get(run, {}))
    if not tags:
        return []
    return [{"key": f"scalars:{tag}", "source": OWN_SOURCE, "split": split_of(tag), "name": tag,
             "steps": steps, "values": values, "aligned": "step"}
            for tag, (steps, values) in _read(data_provider, ctx, eid, run, tags).items() if len(steps)]


def keras_series(data_provider: Any, ctx: Any, eid: str, run: str, listed: Listing, val_steps: np.ndarray | None,
                 max_step: int) -> list[dict[str, Any]]:
    """The scalars Keras' TensorBoard callback wrote next to ``run``
    (``<run>/train``, ``<run>/validation`` or siblings of the run's parent):
    ``batch_*`` (step = batch counter) and ``epoch_*`` (step = epoch, mapped to
    the step where that epoch ended, :func:`epoch_to_step`), as series dicts
    of the ``/loss`` route. ``listed``: :func:`listing`."""
    parent = posixpath.dirname(run)
    candidates = []
    for split, names in (("train", ("train",)), ("val", ("validation", "val"))):
        for base in (run, parent) if parent else (run,):
            for n in names:
                candidates.append((split, posixpath.join(base, n) if base and base != "." else n))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    steps: np.ndarray | None  # None: an epoch series with no step to map it to
    for split, krun in candidates:
        if krun in seen or krun == run or krun not in listed:
            continue
        seen.add(krun)
        tags = [t for t in listed[krun] if t.startswith(("batch_", "epoch_"))]
        if not tags:
            continue
        for tag, (steps, values) in _read(data_provider, ctx, eid, krun, tags).items():
            aligned: str | None = "step"
            if tag.startswith("epoch_"):
                steps, aligned = epoch_to_step(steps, val_steps, max_step)
                if steps is None:
                    continue
            out.append({"key": f"keras:{krun}:{tag}", "source": f"keras run {krun}", "split": split,
                        "name": tag, "steps": steps, "values": values, "aligned": aligned})
    return out


def epoch_to_step(epochs: np.ndarray, val_steps: np.ndarray | None,
                  max_step: int) -> tuple[np.ndarray, str] | tuple[None, None]:
    """Maps Keras' epoch index to the optimizer step where that epoch ended:
    the step of the k-th ``metric/val`` point when there are enough of them,
    else ``(epoch + 1) * max_step / epochs`` (marked "estimated")."""
    if not len(epochs):
        return None, None
    n = int(epochs.max()) + 1
    if val_steps is not None and len(val_steps) >= n and np.all(epochs >= 0):
        return val_steps[epochs], "epoch_end"
    if max_step and n > 0 and np.all(epochs >= 0):
        return np.round((epochs + 1) * (max_step / n)).astype(np.int64), "estimated"
    return None, None
