"""The README's quick start as a new user runs it: model.fit with only
``BNStatsCallback(log_dir)`` -- no probe_data -- then TensorBoard: the tab
opens on the symptom, training-mode against inference-mode accuracy on the
first training samples, with the numbers the callback logged."""

from decimal import ROUND_HALF_UP, Decimal

import keras

import diagnosis_scenarios as scenarios
import tb_bnstats
from test_e2e_tab import browser, tensorboard  # noqa: F401 - browser is a fixture


def js_precision(value, digits):
    """``String(Number(value.toPrecision(digits)))`` as the tab formats a number: JavaScript rounds the
    float's exact value half up (0.15625 -> 0.1563), where Python's format rounds half to even (0.1562)."""
    exact = Decimal(value)
    if exact == 0:
        return "0"
    rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - digits + 1), rounding=ROUND_HALF_UP)
    return format(rounded.normalize(), "f")


def test_a_quick_start_run_shows_both_accuracies_without_probe_data(tmp_path, browser):  # noqa: F811
    x, y = scenarios.digits(n=512)
    keras.utils.set_random_seed(0)
    model = scenarios.dense_model(momentum=0.99)  # the classic symptom: 32 steps at momentum 0.99
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[tb_bnstats.BNStatsCallback(str(tmp_path / "run1"))])
    run = tb_bnstats.load(str(tmp_path))["run1"]
    train, inference = run.metrics["probe_train/accuracy"][1][-1], run.metrics["probe_inference/accuracy"][1][-1]
    assert train - inference > 0.2  # the gap is there, on training data
    with tensorboard(str(tmp_path), min_runs=1) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(base + "/#bn_stats")
        frame = page.wait_for_selector("iframe", timeout=30000).content_frame()
        frame.wait_for_selector("[data-role=probe-accuracy] canvas", timeout=30000)
        note = frame.locator("[data-role=probe-note-accuracy]").text_content()
        assert f"training mode {js_precision(train, 4)}" in note, note
        assert f"inference mode {js_precision(inference, 4)}" in note, note
        card = frame.locator("[data-role=probe-gap]").text_content()
        assert "by default the first 256 training samples" in card
        box = frame.locator("[data-role=probe-accuracy]").bounding_box()
        assert box["y"] < 720  # on the first screen
        page.close()
