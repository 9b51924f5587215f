"""End to end for transfer learning: the suite's frozen base on scaled data
and its fine-tuning (tests/diagnosis_scenarios.py, real Keras training),
served by a real ``tensorboard`` and opened in chromium. The badges say
"frozen" and "pretrained, moved X std" (not "no updates" / "N% converged"),
BN011's badge where fit trained a layer written with training=False, and every
finding message names its numbers; screenshot docs/screenshots/transfer.png."""

import os

import pytest

import diagnosis_scenarios as scenarios
import tb_bnstats
from test_e2e_tab import CHROMIUM, SHOTS, browser, open_tab, points, tensorboard  # noqa: F401 (browser: the fixture)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")

BASE_LAYERS = ["conv0_bn", "conv1_bn"]


def _badges(frame, layer):
    cells = frame.locator(f"tr[data-layer={layer}] [data-badge]")
    return {cells.nth(i).get_attribute("data-badge"): (cells.nth(i).get_attribute("class"), cells.nth(i).text_content())
            for i in range(cells.count())}


def test_frozen_and_fine_tuned_base_in_the_tab(tmp_path, browser):  # noqa: F811 (the fixture imported above)
    logdir = str(tmp_path)
    for name in ("s9_frozen_base_scaled", "s9_fine_tune"):
        scenarios.run_scenario(name, logdir)
    runs = tb_bnstats.load(logdir)
    with tensorboard(logdir, min_runs=2) as base:
        page, frame, errors, _ = open_tab(browser, base)

        frame.click("button.bn-chip[data-run=s9_frozen_base_scaled]")
        frame.locator("[data-role=findings-list] li[data-code=BN010]").first.wait_for(state="visible")
        for layer in BASE_LAYERS:
            badges = _badges(frame, layer)
            assert "frozen" in badges and "tone-info" in badges["frozen"][0], badges
            assert "no_updates" not in badges and "not_converged" not in badges
            assert frame.locator(f"tr[data-layer={layer}] [data-role=convergence]").text_content() == "–"
        text = frame.locator("[data-role=findings-list] li[data-code=BN010]").first.text_content()
        steps, recalibrated = runs["s9_frozen_base_scaled"].metrics["probe_recalibrated/accuracy"]
        assert f"to {recalibrated[-1]:.1%}" in text and "include_frozen=True" in text
        assert "BN002" not in frame.locator("[data-role=findings-list]").text_content()
        # The probe's accuracy chart gains the recalibrated point at the last step.
        probe_steps, _ = runs["s9_frozen_base_scaled"].metrics["probe_train/accuracy"]
        assert points(frame, "[data-role=probe-accuracy]") == 2 * len(probe_steps) + len(steps)

        frame.click("button.bn-chip[data-run=s9_fine_tune]")
        frame.locator("[data-role=findings-list] li[data-code=BN011]").wait_for(state="visible")
        for layer in BASE_LAYERS:
            badges = _badges(frame, layer)
            # The override is finding BN011's badge (one source), not a state badge beside it.
            assert "finding-BN011" in badges and "tone-warn" in badges["finding-BN011"][0], badges
            assert "training_overridden" not in badges
            moved = runs["s9_fine_tune"].layers[layer].series["start_mean_gap/p50"][-1]
            assert badges["pretrained"][1] == f"pretrained, moved {moved:.2f} std"
            assert "not_converged" not in badges
        text = frame.locator("[data-role=findings-list] li[data-code=BN011]").text_content()
        assert "keras-team/keras#20285" in text and "trainable=False" in text
        shown = {li.get_attribute("data-code") for li in frame.locator("[data-role=findings-list] li").all()}
        assert shown == {"BN010", "BN011"}
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 720})
        page.screenshot(path=str(SHOTS / "transfer.png"))
        assert errors == []
