"""The loss chart's other source: scalars Keras' own TensorBoard callback
(or ``torch.utils.tensorboard``) wrote beside a tb_bnstats run, put on the
run's step axis."""

import posixpath

import numpy as np
from tensorboard import errors
from tensorboard.data import provider

from tb_bnstats.read.reader import READ_ALL

KERAS_PLUGIN = "scalars"


def keras_series(data_provider, ctx, eid, run, val_steps, max_step):
    """The scalars Keras' TensorBoard callback wrote next to ``run``
    (``<run>/train``, ``<run>/validation`` or siblings of the run's parent):
    ``batch_*`` (step = batch counter) and ``epoch_*`` (step = epoch, mapped to
    the step where that epoch ended, :func:`epoch_to_step`), as series dicts
    of the ``/loss`` route."""
    try:
        listing = data_provider.list_scalars(ctx, experiment_id=eid, plugin_name=KERAS_PLUGIN)
    except errors.PublicError:
        return []
    parent = posixpath.dirname(run)
    candidates = []
    for split, names in (("train", ("train",)), ("val", ("validation", "val"))):
        for base in (run, parent) if parent else (run,):
            for n in names:
                candidates.append((split, posixpath.join(base, n) if base and base != "." else n))
    out, seen = [], set()
    for split, krun in candidates:
        if krun in seen or krun == run or krun not in listing:
            continue
        seen.add(krun)
        tags = [t for t in listing[krun] if t.startswith(("batch_", "epoch_"))]
        if not tags:
            continue
        result = data_provider.read_scalars(
            ctx, experiment_id=eid, plugin_name=KERAS_PLUGIN, downsample=READ_ALL,
            run_tag_filter=provider.RunTagFilter(runs=[krun], tags=tags)).get(krun, {})
        for tag in sorted(result):
            pts = result[tag]
            steps = np.array([p.step for p in pts], np.int64)
            values = np.array([p.value for p in pts], np.float64)
            aligned = "step"
            if tag.startswith("epoch_"):
                steps, aligned = epoch_to_step(steps, val_steps, max_step)
                if steps is None:
                    continue
            out.append({"key": f"keras:{krun}:{tag}", "source": f"keras run {krun}", "split": split,
                        "name": tag, "steps": steps, "values": values, "aligned": aligned})
    return out


def epoch_to_step(epochs, val_steps, max_step):
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
