"""A long run at the defaults, read by a real ``tensorboard`` at its default
flags: one batch out of 20,000 is an outlier, at a step only the test knows,
and the tab's heat map and the layer's series show it with its true value,
with nothing sampled away."""

import numpy as np
import pytest
import torch
from torch import nn

from tb_bnstats.torch import BNStatsMonitor
from test_e2e_tab import get_json, tensorboard

STEPS = 20_000
BATCH = 32
SHIFT = 30.0  # the outlier batch's inputs are moved this far (the others have unit variance)


@pytest.fixture
def one_thread():
    """A small model trains fastest on one thread (more fight over 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_one_step_outlier_in_20000_steps_shows_at_default_flags(tmp_path, one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng()
    outlier_step = int(rng.integers(2_000, STEPS - 100))  # drawn here, told to no one but the asserts
    model = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pool = torch.randn(64, BATCH, 8)
    labels = torch.randint(0, 2, (64, BATCH))
    seen: dict[str, np.ndarray] = {}
    logdir = tmp_path / "logs" / "long"
    monitor = BNStatsMonitor(model, str(logdir), verbose=0)
    for step in range(1, STEPS + 1):
        x, y = pool[step % 64], labels[step % 64]
        if step == outlier_step:
            x = x + SHIFT
            seen["input"] = x.numpy().astype(np.float64)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == outlier_step:
            seen["running_mean"] = model[0].running_mean.numpy().astype(np.float64)
        monitor.step(loss=loss)
    monitor.close()

    # The gap the layer had at that step, by numpy from its real input: |mu_B - mu_R| / sqrt(var_B + eps),
    # var_B Bessel-corrected as PyTorch averages it, mu_R the running mean after the step.
    x = seen["input"]
    gap = np.max(np.abs(x.mean(0) - seen["running_mean"]) / np.sqrt(x.var(0, ddof=1) + model[0].eps))
    size = sum(f.stat().st_size for f in logdir.glob("events.out.tfevents.*"))
    print(f"\n{STEPS} steps, 1 BN layer: {size} bytes of events, {size / STEPS:.1f} bytes per layer per step "
          f"(outlier at step {outlier_step}, mean gap {gap:.1f})")

    with tensorboard(str(tmp_path / "logs"), min_runs=1) as base:  # TensorBoard's default flags
        api = base + "/data/plugin/bn_stats"
        heatmap = get_json(api + "/heatmap?run=long&measure=mean_gap/max&bins=200")
        row = np.array([np.nan if v is None else v for v in heatmap["values"][0]])
        edges = np.array(heatmap["step_edges"])
        at = int(np.searchsorted(edges, outlier_step, side="right") - 1)
        assert row[at] == pytest.approx(gap, rel=1e-5)
        others = np.delete(row, at)
        assert np.nanmax(others) < gap / 5
        assert heatmap["sampling"]["sampled"] is False

        series = get_json(api + "/series?run=long&layer=0&quantities=mean_gap/max")
        assert series["sampling"]["sampled"] is False
        points = series["series"]["mean_gap/max"]
        steps, values = np.array(points["steps"]), np.array([np.nan if v is None else v for v in points["values"]])
        assert steps[np.nanargmax(values)] == outlier_step
        assert np.nanmax(values) == pytest.approx(gap, rel=1e-5)
