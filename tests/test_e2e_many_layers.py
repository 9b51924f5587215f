"""A run of a real model's size (DenseNet121 has 121 BN layers) in the tab at
1280x720: the first screen holds the verdict, the train/inference accuracy
gap and the start of the layers table; a finding over all 120 layers names a
few and folds the rest. The run is written with the real writer: momentum
0.99 for 40 steps, every layer's batches a full std from the moving means
(BN001 on every layer), and the probe's two accuracies."""

import numpy as np

import tb_bnstats
from tb_bnstats.write import summary
from test_e2e_tab import SHOTS, browser, tensorboard  # noqa: F401 - browser is a fixture

LAYERS = 120
STEPS = 40


def _write_run(logdir):
    rng = np.random.default_rng(0)
    with summary.Writer(str(logdir / "wide")) as w:
        moving = {i: (np.zeros(8), np.ones(8)) for i in range(LAYERS)}
        for step in range(1, STEPS + 1):
            for i in range(LAYERS):
                bm, bv = rng.normal(1.0, 0.05, 8), rng.uniform(0.9, 1.1, 8)
                mm, mv = moving[i]
                moving[i] = mm, mv = 0.99 * mm + 0.01 * bm, 0.99 * mv + 0.01 * bv
                w.layer_moments(f"block{i // 6}/layer{i % 6}_bn", step, batch_mean=bm, batch_var=bv, moving_mean=mm,
                                moving_var=mv, updates=step, momentum=0.99, epsilon=1e-3)
            w.metrics("train", {"loss": 2.0 / step}, step)
            if step % 10 == 0:
                w.metrics("probe_train", {"accuracy": 0.99, "loss": 0.05}, step)
                w.metrics("probe_inference", {"accuracy": 0.2, "loss": 3.0}, step)


def test_the_first_screen_of_a_120_layer_run(tmp_path, browser):  # noqa: F811 - the fixture
    logdir = tmp_path / "logs"
    _write_run(logdir)
    [finding] = tb_bnstats.diagnose(str(logdir))
    assert finding.code == "BN001" and len(finding.layers) == LAYERS
    with tensorboard(str(logdir), min_runs=1) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/#bn_stats")
        frame = page.wait_for_selector("iframe", timeout=30000).content_frame()
        frame.wait_for_selector("[data-role=probe-accuracy] canvas", timeout=30000)
        frame.wait_for_selector("[data-role=findings-list] li[data-code=BN001]")
        bottom = page.viewport_size["height"]
        iframe_top = page.locator("iframe").bounding_box()["y"]

        def top(selector):
            return iframe_top + frame.locator(selector).first.bounding_box()["y"]

        assert top("[data-role=findings-banner]") < bottom
        assert top("[data-role=probe-accuracy]") < bottom
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "many-layers.png"))
        assert top("[data-role=layers] tbody tr") < bottom, "the layers table starts below the first screen"
        # 120 layers named: a count, five links, the rest folded.
        names = frame.locator("[data-role=findings-list] li[data-code=BN001] .bn-finding-layers")
        assert names.get_attribute("data-count") == str(LAYERS)
        assert names.locator(":scope > .bn-layer-link").count() == 5
        assert names.locator("summary").text_content() == f"+{LAYERS - 5} more"
        message = frame.locator("[data-role=findings-list] li[data-code=BN001] .bn-finding-msg").text_content()
        assert f"and {LAYERS - 6} more ({LAYERS} layers)" in message
        note = frame.locator("[data-role=probe-note-accuracy]").text_content()
        assert "training mode 0.99" in note and "inference mode 0.2" in note
        # The heat map gives each of the 120 layers a visible row (7 px) and labels every few of them.
        heat = frame.locator("[data-role=heatmap] canvas").first.bounding_box()
        assert heat["height"] >= 40 + 7 * LAYERS
        # Sorting the layers table, worst first, then reversed, then back to depth order; against the logs.
        latest = {name: layer.series["mean_gap/max"][-1]
                  for name, layer in tb_bnstats.load(str(logdir))["wide"].layers.items()}
        first_row = "(document.querySelector('[data-role=layers] tbody tr') || {dataset: {}}).dataset.layer"
        for expected in (max(latest, key=latest.get), min(latest, key=latest.get)):
            before = frame.evaluate("document.body.dataset.ready")
            frame.click("[data-role=layers] th[data-sort=mean_gap]")
            frame.wait_for_function(f"document.body.dataset.ready !== '{before}'")
            assert frame.evaluate(first_row) == expected
        frame.click("[data-role=layers] th[data-sort=depth]")
        frame.wait_for_function(f"{first_row} === 'block0/layer0_bn'")
        assert errors == []
