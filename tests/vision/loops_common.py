"""What the loop tests share (tests/vision/test_lightning.py,
test_transformers.py, test_timm_torchvision.py): images, our own record of
every BN module's training inputs and buffers (forward pre-hooks of the
test's, independent of tb_bnstats'), the numpy check of a logged run against
it, a subprocess that records any attempt to import TensorFlow, Keras or
JAX, and the tab's check through a real ``tensorboard``."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import urllib.parse

import numpy as np
import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[2]


def images(n=64, size=32, classes=3, seed=0):
    """Random images far from the running statistics' initial (0, 1), and
    labels a network learns: the channel (of the first ``classes``) with the
    largest mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 2.0 + 1.5
    x[:, :classes] += torch.randn(n, classes, 1, 1, generator=g)
    return x, x[:, :classes].mean((2, 3)).argmax(1)


def bn_modules(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class BNRecord:
    """Every training forward's BN inputs (float64), kept as the current
    step's until :meth:`step_done`, which also keeps the buffers then."""

    def __init__(self, model, prefix=""):
        self.named = [(prefix + n, m) for n, m in bn_modules(model)]
        self.current, self.inputs, self.running, self.steps = {}, [], [], []
        self.handles = [m.register_forward_pre_hook(self._keep(n)) for n, m in self.named]

    def _keep(self, name):
        def hook(module, args):
            if module.training and torch.is_grad_enabled():
                self.current[name] = args[0].detach().double().cpu().numpy()  # the last micro-batch's stays
        return hook

    def step_done(self, step):
        self.steps.append(int(step))
        self.inputs.append(dict(self.current))
        self.running.append({n: (m.running_mean.detach().double().numpy().copy(),
                                 m.running_var.detach().double().numpy().copy(), int(m.num_batches_tracked))
                             for n, m in self.named})
        self.current = {}

    def remove(self):
        for h in self.handles:
            h.remove()


def check_run(run, record, names=None):
    """Every logged step is the recorded optimizer step; each step's batch
    moments equal numpy's of the module's recorded input (the variance in
    running_var's Bessel-corrected convention), the moving statistics the
    buffers, the update count num_batches_tracked."""
    names = names or [n for n, _ in record.named]
    assert sorted(run.layers) == sorted(names)
    for name in names:
        logged = run.layers[name]
        assert list(logged.steps) == record.steps, name
        assert list(logged.snapshot_steps) == record.steps, name
        for i in range(len(record.steps)):
            x = record.inputs[i][name]
            axes = (0, *range(2, x.ndim))
            n = x.size / x.shape[1]
            scale = max(1.0, float(np.abs(x).max()))
            np.testing.assert_allclose(logged.snapshots["batch_mean"][i], x.mean(axis=axes), rtol=1e-4,
                                       atol=1e-5 * scale, err_msg=f"{name} step {record.steps[i]}")
            np.testing.assert_allclose(logged.snapshots["batch_var"][i], x.var(axis=axes) * n / (n - 1), rtol=1e-4,
                                       atol=1e-5 * scale**2, err_msg=f"{name} step {record.steps[i]}")
            mean, var, tracked = record.running[i][name]
            np.testing.assert_allclose(logged.snapshots["moving_mean"][i], mean, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(logged.snapshots["moving_var"][i], var, rtol=1e-6, atol=1e-7)
            assert logged.series["updates"][i] == tracked


# Run first in the subprocess: every import statement of these (found or not) is recorded; a look-up
# without importing (importlib.util.find_spec, as torch._dynamo makes) is not an import.
_WATCH = textwrap.dedent("""
    import sys
    ATTEMPTED = []
    class _Watch:
        def find_spec(self, name, path=None, target=None):
            importing = sys._getframe(2).f_code.co_name == "_find_and_load_unlocked"
            if importing and name.split(".")[0] in ("tensorflow", "keras", "jax", "tf_keras"):
                ATTEMPTED.append(name)
            return None
    sys.meta_path.insert(0, _Watch())
""")


def run_watching_imports(script, cwd):
    """Runs ``script`` in a fresh Python; returns the names of TensorFlow,
    Keras or JAX modules it tried to import (loaded or not), and of those in
    ``sys.modules`` at its end."""
    code = _WATCH + textwrap.dedent(script) + textwrap.dedent("""
        import json
        print("IMPORTS", json.dumps(sorted(set(ATTEMPTED) | {m for m in sys.modules
              if m.split(".")[0] in ("tensorflow", "keras", "jax", "tf_keras")})))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "vision")))
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("IMPORTS ")]
    assert line, out.stdout[-2000:]
    return json.loads(line[-1][len("IMPORTS "):])


def check_tab(logdir, run, scalar_tag):
    """A real ``tensorboard --logdir logdir``: the BN tab lists ``run``, and
    its loss chart's route serves the scalar ``scalar_tag`` the trainer wrote
    into the same run, beside the run's BN layers."""
    from test_e2e_tab import get_json, tensorboard

    with tensorboard(str(logdir), min_runs=1) as url:
        runs = [r["run"] for r in get_json(url + "/data/plugin/bn_stats/runs")["runs"]]
        assert run in runs, runs
        loss = get_json(url + "/data/plugin/bn_stats/loss?run=" + urllib.parse.quote(run))
    own = [s for s in loss["series"] if s["source"] == "run's own scalars"]
    assert scalar_tag in [s["name"] for s in own], [s["name"] for s in loss["series"]]
    return loss
