"""The tab on runs trained over several devices, served by a real
``tensorboard`` and opened in chromium: a dense BN on digits under
``MirroredStrategy`` over 4 logical CPU devices (not synchronized, 4 samples
per replica: BN013) and the toy model under JAX's ``DataParallel`` over 4
forced host devices (synchronized by construction). The overview says how
many replicas and whether BN was synchronized; the layer page draws the
replica series and the replicas x channels maps, whose numbers are checked
against numpy on each device's slice of the batch. Screenshot
docs/screenshots/replicas.png."""

import os
import re
import shutil

import numpy as np
import pytest

from test_e2e_tab import CHROMIUM, SHOTS, browser, open_tab, points, tensorboard  # noqa: F401 (browser: the fixture)
from test_replicas_keras import slices, train

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    base = tmp_path_factory.mktemp("replicas")
    train(base / "mirrored", "tensorflow", "--monitor", "--replicas", "4", "--model", "dense", "--batch", "16",
          "--epochs", "1", "--samples", "1792")
    toy, _, _ = train(base / "sharded", "jax", "--monitor", "--replicas", "4")
    logs = base / "logs"
    for name in ("mirrored", "sharded"):
        shutil.move(str(base / name / "logs"), str(logs / name))
    return str(logs), toy


def _cell_tip(frame, role, row, channel, rows):
    """The tooltip of one cell of a replicas x channels map."""
    chart = frame.locator(f"[data-role={role}]")
    x, y = frame.evaluate(
        f"(() => {{ const u = document.querySelector('[data-role={role}]').__uplot; "
        f"return [u.valToPos({channel}, 'x'), u.valToPos({rows - 1 - row}, 'y')]; }})()")
    chart.locator(".u-over").hover(position={"x": x, "y": y})
    tip = chart.locator(".bn-tip")
    tip.wait_for(state="visible")
    return tip.text_content()


def test_replicas_in_the_overview_and_the_layer_page(logdir, browser):  # noqa: F811 (the fixture imported above)
    logs, toy = logdir
    with tensorboard(logs, min_runs=2) as base:
        page, frame, errors, _ = open_tab(browser, base)
        frame.click("button.bn-chip[data-run=mirrored]")
        summary = frame.locator("[data-role=replicas-summary]")
        summary.wait_for(state="visible")
        assert summary.text_content() == ("4 replicas · BN not synchronized · moving statistics per replica "
                                          "(replica 0's saved)")
        frame.locator("[data-role=findings-list] li[data-code=BN013]").first.wait_for(state="visible")

        frame.click("button.bn-chip[data-run=sharded]")
        frame.wait_for_function("document.querySelector('[data-role=replicas-summary]')?.textContent"
                                ".includes('BN synchronized')")
        assert frame.locator("[data-role=replicas-summary]").text_content() == (
            "4 replicas · BN synchronized · moving statistics shared")

        # The toy run's layer page: BN on the data, so every replica's slice is known here.
        frame.click("tr[data-layer=bn]")
        frame.wait_for_selector("[data-role=chart-replica-mean] canvas", timeout=30000)
        assert points(frame, "[data-role=chart-replicas]") > 0
        assert frame.locator("[data-role=chart-rank-moving]").count() == 0  # one copy of the moving statistics
        assert points(frame, "[data-role=chart-replica-mean]") == 4 * 4  # replicas x channels
        assert frame.locator("[data-role=chart-replica-moving]").count() == 0
        assert "replicas: 4 · BN synchronized" in frame.locator("[data-role=facts]").text_content()
        step = int(frame.locator("[data-role=replica-step]").text_content().split()[-1])
        whole, parts = slices(toy, step)
        for row, channel in ((0, 0), (3, 2)):
            want = abs(parts[row][:, channel].mean() - whole[:, channel].mean()) / np.sqrt(whole[:, channel].var()
                                                                                          + 1e-3)
            tip = _cell_tip(frame, "chart-replica-mean", row, channel, 4)
            assert f"replica {row}" in tip and f"channel {channel}" in tip, tip
            shown = float(re.findall(r"\d+\.\d+(?:e[-+]?\d+)?", tip)[-1])
            assert shown == pytest.approx(want, rel=2e-3, abs=1e-4), (tip, want)
        # The slider moves the maps to an earlier snapshot.
        frame.locator("[data-role=replica-step-slider]").fill("0")
        frame.wait_for_function("document.querySelector('[data-role=replica-step]').textContent === 'step 1'")

        # The mirrored run's dense layer: 32 channels, each replica's own moving statistics too.
        frame.click("button.bn-back")
        frame.click("button.bn-chip[data-run=mirrored]")
        frame.click("tr[data-layer=dense_bn]")
        frame.wait_for_selector("[data-role=chart-replica-moving] canvas", timeout=30000)
        assert points(frame, "[data-role=chart-rank-moving]") > 0
        assert points(frame, "[data-role=chart-replica-mean]") == 4 * 32
        page.set_viewport_size({"width": 1280, "height": 900})
        frame.locator("[data-role=replicas]").screenshot(path=str(SHOTS / "replicas.png"))
        frame.locator("[data-role=chart-replicas]").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "replica-series.png"))
        assert not errors, errors
