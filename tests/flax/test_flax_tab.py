"""End to end for Flax: ``demo/train_flax.py``'s NNX runs (the healthy one and
Flax's default momentum 0.99 on a short run) trained in a subprocess, served
by a real ``tensorboard --logdir`` and opened in chromium: the layers by
their NNX paths in the order the step ran them, momentum in Flax's
convention, BN001 on the layer that has not converged, the run's loss;
screenshot docs/screenshots/flax.png (docs/flax.md)."""

import os
import pathlib
import subprocess
import sys

import pytest

import tb_bnstats
from test_e2e_tab import CHROMIUM, SHOTS, browser, open_tab, points, tensorboard  # noqa: F401 (browser: the fixture)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAYERS = ["blocks.0.bn", "blocks.1.bn", "blocks.2.bn", "dense_bn"]
RUNS = {"flax_healthy": "momentum=0.9", "flax_momentum_0.99": "momentum=0.99"}


def test_flax_demo_runs_in_the_tab(tmp_path, browser):  # noqa: F811 (the fixture imported above)
    logdir = tmp_path / "logs"
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "train_flax.py"), "--logdir", str(logdir),
                           "--runs", *RUNS], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "flax_healthy               findings: none " in done.stdout, done.stdout
    assert "flax_momentum_0.99         findings: BN001 " in done.stdout, done.stdout
    runs = tb_bnstats.load(str(logdir))
    for run in RUNS:
        assert list(runs[run].layers) == LAYERS
        assert list(runs[run].layers["dense_bn"].series["updates"][-3:]) == [127, 128, 129]  # 3 epochs of 43
    # What the tab will say of dense_bn at momentum 0.99: 1 - 0.99^129 converged.
    conv = runs["flax_momentum_0.99"].layers["dense_bn"].series["convergence"][-1]
    assert conv == pytest.approx(1 - 0.99 ** 129, rel=1e-5)

    with tensorboard(str(logdir), min_runs=2) as base:
        page, frame, errors, _ = open_tab(browser, base)
        chips = frame.locator("button.bn-chip")
        assert sorted(chips.nth(i).get_attribute("data-run") for i in range(chips.count())) == sorted(RUNS)
        frame.click("button.bn-chip[data-run='flax_momentum_0.99']")
        frame.wait_for_selector("tr[data-layer='dense_bn']")
        rows = frame.locator("[data-role=layers] tbody tr")
        assert [rows.nth(i).get_attribute("data-layer") for i in range(rows.count())] == LAYERS
        for name in LAYERS:  # Flax's momentum is Keras' convention: shown as built
            assert frame.locator(f"tr[data-layer='{name}'] [data-role=momentum]").text_content() == "momentum=0.99"
        assert frame.locator("tr[data-layer='dense_bn'] [data-badge=not_converged]").count() == 1
        finding = frame.locator("[data-role=findings-list] li[data-code=BN001]")
        finding.wait_for(state="visible")
        text = finding.text_content()
        assert "at momentum=0.99; 95% needs 299" in text and "Use momentum=0.95 for runs this short" in text, text
        frame.wait_for_selector("[data-role=loss] canvas")
        assert points(frame, "[data-role=heatmap]") > 0 and points(frame, "[data-role=loss]") > 0
        legend = frame.locator("[data-role=loss] .u-legend").text_content()
        assert "train/loss" in legend, legend
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "flax.png"))

        # The layer view of dense_bn: its convergence against 1 - 0.99^updates.
        frame.click("tr[data-layer='dense_bn']")
        frame.wait_for_selector("[data-role=chart-convergence] canvas")
        assert points(frame, "[data-role=chart-mean]") > 0 and points(frame, "[data-role=chart-convergence]") > 0
        facts = frame.locator("[data-role=facts]").text_content()
        assert "momentum=0.99" in facts and "(flax)" in facts, facts
        note = frame.locator("[data-role=convergence-note]").text_content()
        assert note.startswith("momentum=0.99 · effective window 100 steps · 95% after 299 updates"), note
        assert errors == []
