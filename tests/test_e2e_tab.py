"""End to end: a real ``tensorboard --logdir`` (default flags) and Debian's
chromium through Playwright open the BN Convergence tab, check that layers and
charts with data are there, walk through the layer, per-channel and compare
views, and save screenshots into docs/screenshots/."""

import contextlib
import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")


# How tensorboard says where it serves; a counter for its log files' names.
_SERVING = re.compile(r"TensorBoard \S+ at (http://127\.0\.0\.1:\d+)/")
_STARTS = itertools.count()


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode("utf-8"))


@contextlib.contextmanager
def tensorboard(logdir, *flags, min_runs=3):
    """A real ``tensorboard --logdir`` subprocess, yielded (as its base URL)
    once the plugin lists ``min_runs`` runs. It binds a port of its own
    choosing (``--port 0``), read from the line it prints: a port picked here
    and bound there could be taken in between (seen: "could not bind")."""
    exe = pathlib.Path(sys.executable).with_name("tensorboard")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    log_path = os.path.join(logdir, f"..tensorboard-{next(_STARTS)}-{os.getpid()}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([str(exe), "--logdir", logdir, "--port", "0", "--host", "127.0.0.1", *flags],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 90
        base = None
        while True:
            assert proc.poll() is None, "tensorboard exited early: " + pathlib.Path(log_path).read_text()[-2000:]
            if base is None:
                found = _SERVING.search(pathlib.Path(log_path).read_text())
                base = found.group(1) if found else None
            try:
                runs = get_json(base + "/data/plugin/bn_stats/runs")["runs"] if base else []
                if len(runs) >= min_runs:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert time.time() < deadline, "tensorboard did not serve the runs in 90 s"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(keras_logdir):
    logdir, _ = keras_logdir
    with tensorboard(logdir) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_tab(browser, base, color_scheme="light"):
    page = browser.new_page(viewport={"width": 1400, "height": 1400}, color_scheme=color_scheme)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    started = time.time()
    page.goto(base + "/#bn_stats")
    frame = page.wait_for_selector("iframe", timeout=30000).content_frame()
    frame.wait_for_selector("[data-role=heatmap] canvas", timeout=30000)
    return page, frame, errors, time.time() - started


def points(frame, selector):
    return int(frame.locator(selector).first.get_attribute("data-points"))


def test_tab_overview_layer_channels_compare(server, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page, frame, errors, first_chart_s = open_tab(browser, server)
    print(f"time to first chart: {first_chart_s:.2f} s")

    # Overview of the first run (keras), then synth.
    assert frame.locator("button.bn-chip").count() == 3
    frame.click("button.bn-chip[data-run=synth]")
    frame.wait_for_selector("tr[data-layer=conv2_bn]")
    rows = frame.locator("[data-role=layers] tbody tr")
    assert ([rows.nth(i).get_attribute("data-layer") for i in range(rows.count())]
            == ["conv1_bn", "conv2_bn", "dense_bn"])
    frame.wait_for_selector("[data-role=heatmap] canvas")
    assert points(frame, "[data-role=heatmap]") > 0
    # A fixed colour scale (1 std for mean_gap/max, whatever the run's max), every row's warm-up dimmed
    # (momentum 0.99 for 120 steps: none of them converged).
    heat = frame.locator("[data-role=heatmap]")
    assert heat.get_attribute("data-scale-top") == "1" and heat.get_attribute("data-warmup-rows") == "3"
    frame.wait_for_selector("[data-role=loss] canvas")
    assert points(frame, "[data-role=loss]") > 0
    assert points(frame, "canvas[data-layer=conv2_bn]") > 0
    assert frame.locator("tr[data-layer=conv2_bn] [data-badge=not_converged]").count() == 1
    momentum = frame.locator("tr[data-layer=conv2_bn] [data-role=momentum]")
    assert momentum.text_content() == "momentum=0.99" and momentum.get_attribute("title").startswith("Keras")
    # The diagnosis: a banner above the layers table and the list (BN001 on conv2_bn and dense_bn).
    banner = frame.locator("[data-role=findings-banner]")
    banner.wait_for(state="visible")
    assert banner.text_content().startswith("1 error") and banner.get_attribute("data-level") == "error"
    finding = frame.locator("[data-role=findings-list] li[data-code=BN001]")
    assert finding.count() == 1 and finding.get_attribute("data-layer") == "conv2_bn"
    assert "95% needs 299" in finding.text_content()
    assert (frame.locator("[data-role=findings-list] li[data-code=BN001] .bn-layer-link").all_text_contents()
            == ["conv2_bn", "dense_bn"])
    assert (frame.locator("[data-role=findings]").bounding_box()["y"]
            < frame.locator("[data-role=layers]").bounding_box()["y"])
    page.screenshot(path=str(SHOTS / "overview.png"))

    # Zooming the heat map (drag over steps) zooms the loss chart under it.
    box = frame.locator("[data-role=heatmap] .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    frame.wait_for_function("document.querySelector('[data-role=loss]').__uplot.scales.x.max < 100")
    hm_x = frame.evaluate("(() => { const s = document.querySelector('[data-role=heatmap]').__uplot.scales.x; "
                          "return [s.min, s.max]; })()")
    loss_x = frame.evaluate("(() => { const s = document.querySelector('[data-role=loss]').__uplot.scales.x; "
                            "return [s.min, s.max]; })()")
    assert hm_x == pytest.approx(loss_x) and 20 < loss_x[0] < loss_x[1] < 70
    frame.locator("[data-role=loss] .u-over").dblclick()  # double-click resets both
    frame.wait_for_function("document.querySelector('[data-role=heatmap]').__uplot.scales.x.max > 120")
    assert frame.evaluate("document.body.dataset.view") == "overview"  # a drag is not a click on a row

    # Layer detail, opened from the finding: its first layer, with the finding at the top.
    frame.click("[data-role=findings-list] li[data-code=BN001] .bn-finding-msg")
    frame.wait_for_selector("[data-role=chart-convergence] canvas")
    assert frame.evaluate("document.body.dataset.view") == "layer"
    assert frame.locator("[data-role=layer-select]").input_value() == "conv2_bn"
    assert frame.locator("[data-role=layer-findings] li[data-code=BN001]").count() == 1
    for role in ("chart-mean", "chart-var", "chart-gap", "chart-vgap", "chart-convergence"):
        assert points(frame, f"[data-role={role}]") > 0, role
    # In order of importance, the less used symmetric KL folded.
    order = frame.evaluate("[...document.querySelectorAll('.bn-chart[data-role^=chart-]')].map((e) => e.dataset.role)")
    assert order[:5] == ["chart-convergence", "chart-gap", "chart-vgap", "chart-mean", "chart-var"], order
    assert frame.locator("[data-role=folded-kl]").get_attribute("open") is None
    note = frame.locator("[data-role=convergence-note]").text_content()
    assert "95% after 299 updates" in note and note.startswith("momentum=0.99 ·")  # Keras' convention
    assert frame.locator("[data-role=facts]").text_content().count("100 steps") == 1
    # Axes named as in TensorBoard's Scalars: "step" under each time chart, the unit beside it.
    chart = frame.locator("[data-role=chart-gap]")
    assert ((chart.get_attribute("data-x-label"), chart.get_attribute("data-y-label"))
            == ("step", "gap (train-time std)"))
    # Tooltips: 4 significant digits.
    frame.locator("[data-role=chart-gap] .u-over").hover()
    tip = frame.locator("[data-role=chart-gap] .bn-tip")
    tip.wait_for(state="visible")
    numbers = re.findall(r"\d+\.\d+", tip.text_content())
    assert numbers and all(len(n.replace(".", "").lstrip("0")) <= 4 for n in numbers), tip.text_content()
    page.screenshot(path=str(SHOTS / "layer.png"))

    # Per-channel view: 6 channels x 3 series; move the slider to the first snapshot.
    frame.wait_for_selector("[data-role=chart-ch-mean] canvas")
    assert points(frame, "[data-role=chart-ch-mean]") == 18
    # Half a channel of room at both ends: the first and last bars of the gap chart are whole.
    assert frame.evaluate("(() => { const u = document.querySelector('[data-role=chart-ch-gap]').__uplot; "
                          "return [u.scales.x.min, u.scales.x.max]; })()") == [-0.5, 5.5]
    assert frame.locator("[data-role=channel-step]").text_content() == "step 120"
    frame.locator("[data-role=step-slider]").fill("0")
    frame.wait_for_function("document.querySelector('[data-role=channel-step]').textContent === 'step 40'")
    frame.wait_for_selector("[data-role=chart-ch-gap] canvas")
    frame.locator("[data-role=channels]").scroll_into_view_if_needed()
    frame.locator("[data-role=channels]").screenshot(path=str(SHOTS / "channels.png"))

    # The CSV download link answers with CSV.
    href = frame.locator("[data-role=channels] .bn-dl a").first.get_attribute("href")
    assert href.startswith("snapshot?") and "format=csv" in href
    answer = page.request.get(server + "/data/plugin/bn_stats/" + href)
    assert answer.text().startswith("channel,batch_mean")
    # Every download of the layer page has its own name, with run and layer; the CSV's is the server's.
    link = frame.locator("[data-role=channels] .bn-dl a").first
    assert f'filename="{link.get_attribute("download")}"' in answer.headers["content-disposition"]
    names = frame.locator(".bn-dl a").evaluate_all("links => links.map((a) => a.getAttribute('download'))")
    assert len(names) >= 6 and len(set(names)) == len(names), names
    assert all(n.endswith((".csv", ".json")) and n.startswith("synth_") for n in names), names

    # Compare runs.
    frame.click("button[data-view=compare]")
    frame.wait_for_selector("[data-role='compare-mean_gap/max'] canvas")
    assert points(frame, "[data-role='compare-mean_gap/max']") > 0
    legend = frame.locator("[data-role='compare-mean_gap/max'] .u-legend").text_content()
    assert "synth" in legend and "synth_b" in legend
    # Each run's momentum and convergence once, above the charts, not on every chart.
    facts = frame.locator("[data-role=compare-facts]")
    assert facts.count() == 1 and frame.locator(".bn-view").text_content().count("95% after") == len(
        facts.locator("[data-run]").all()) >= 2
    page.screenshot(path=str(SHOTS / "compare.png"))
    assert errors == []


def test_tab_dark_theme_and_reload(server, browser):
    page, frame, errors, _ = open_tab(browser, server, color_scheme="dark")
    bg = frame.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(32, 33, 36)"
    frame.click("button.bn-chip[data-run=synth]")
    frame.locator("[data-role=findings-banner][data-level=error]").wait_for(state="visible")
    assert frame.evaluate(
        "getComputedStyle(document.querySelector('[data-role=findings-banner]')).backgroundColor") == "rgb(60, 28, 30)"
    frame.wait_for_selector("[data-role=heatmap] canvas")
    page.screenshot(path=str(SHOTS / "overview-dark.png"))
    # TensorBoard's reload button reaches the tab (experimental.DataReloaded).
    before = frame.evaluate("document.body.dataset.ready")
    page.locator("button.reload-button").first.click()
    frame.wait_for_function(f"document.body.dataset.ready !== '{before}'", timeout=15000)
    # A layer named in a finding opens that layer (not the finding's first one).
    frame.click("[data-role=findings-list] li[data-code=BN001] .bn-layer-link[data-layer=dense_bn]")
    frame.wait_for_selector("[data-role=layer-findings] li[data-code=BN001]")
    assert frame.locator("[data-role=layer-select]").input_value() == "dense_bn"
    # Its findings speak of it, with its own numbers, not of the finding's first layer.
    message = frame.locator("[data-role=layer-findings] li[data-code=BN001] .bn-finding-msg").text_content()
    assert message.startswith("dense_bn:") and "conv1_bn:" not in message, message
    assert errors == []


def test_the_url_keeps_run_view_layer_and_step_across_a_reload(server, browser):
    """Run, view, layer and snapshot step go into TensorBoard's URL hash
    (p.bn_stats.*): a reload, or the link opened in a new page, shows the
    same layer of the same run at the same step."""
    page, frame, errors, _ = open_tab(browser, server)
    frame.click("button.bn-chip[data-run=synth]")
    frame.click("tr[data-layer=conv2_bn]")
    frame.wait_for_selector("[data-role=step-slider]")
    frame.locator("[data-role=step-slider]").fill("0")
    page.wait_for_function("location.hash.includes('p.bn_stats.step=40')")  # once that snapshot is drawn
    url = page.url
    for key, value in (("run", "synth"), ("view", "layer"), ("layer", "conv2_bn"), ("step", "40")):
        assert f"p.bn_stats.{key}={value}" in url, url

    def shows_the_same(tab):
        tab.wait_for_selector("[data-role=channel-step]", timeout=30000)
        tab.wait_for_function("document.querySelector('[data-role=channel-step]').textContent === 'step 40'")
        assert tab.locator("button.bn-chip[aria-pressed=true]").get_attribute("data-run") == "synth"
        assert tab.evaluate("document.body.dataset.view") == "layer"
        assert tab.locator("[data-role=layer-select]").input_value() == "conv2_bn"

    page.reload()
    shows_the_same(page.wait_for_selector("iframe", timeout=30000).content_frame())
    shared = browser.new_page(viewport={"width": 1280, "height": 720})
    shared.goto(url)
    shows_the_same(shared.wait_for_selector("iframe", timeout=30000).content_frame())
    shared.close()
    assert errors == []


def test_the_run_filter_takes_a_regex_like_tensorboards(server, browser):
    page, frame, errors, _ = open_tab(browser, server)
    visible = "[...document.querySelectorAll('.bn-chip')].filter((c) => !c.hidden).map((c) => c.dataset.run)"
    field = frame.locator("[data-role=run-filter]")
    for text, runs, count in (("^SYNTH", ["synth", "synth_b"], "2 of 3"), ("_b$|^ker", ["keras", "synth_b"], "2 of 3"),
                              ("(", ["keras", "synth", "synth_b"], "")):
        field.fill(text)
        assert frame.evaluate(visible) == runs, text
        assert frame.locator("[data-role=run-count]").text_content() == count
    assert "invalid" in field.get_attribute("class") and "not a regular expression" in field.get_attribute("title")
    field.fill("^synth$")
    frame.click("button.bn-chip[data-run=synth]")  # the filter survives the redraw
    frame.wait_for_selector("button.bn-chip[data-run=synth][aria-pressed=true]")
    assert frame.evaluate(visible) == ["synth"]
    assert errors == []


def test_smoothing_keeps_the_raw_line_faded_and_the_zoom(server, browser):
    """As TensorBoard's Scalars: a smoothed chart keeps its raw values as a
    faded line (out of the legend), and the zoom dragged before stays; a
    double-click resets it."""
    page, frame, errors, _ = open_tab(browser, server)
    frame.click("button.bn-chip[data-run=synth]")
    frame.click("tr[data-layer=conv2_bn]")
    frame.wait_for_selector("[data-role=chart-gap] canvas")
    over = frame.locator("[data-role=chart-gap] .u-over")
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    x_range = ("(role) => { const u = document.querySelector(`[data-role=${role}]`).__uplot; "
               "return [u.scales.x.min, u.scales.x.max]; }")
    zoomed = frame.evaluate(x_range, "chart-gap")
    assert 30 < zoomed[0] < zoomed[1] < 90, zoomed  # of steps 1-120
    assert frame.evaluate(x_range, "chart-mean") == zoomed  # the group follows
    before = frame.evaluate("document.body.dataset.ready")
    frame.locator(".bn-bar input[type=range]").fill("0.8")
    frame.wait_for_function(f"document.body.dataset.ready !== '{before}'")
    frame.wait_for_selector("[data-role=chart-gap] canvas")
    assert frame.evaluate(x_range, "chart-gap") == zoomed
    labels = frame.evaluate("document.querySelector('[data-role=chart-gap]').__uplot.series.map((s) => s.label)")
    assert "mean over channels (raw)" in labels and "max (raw)" in labels
    legend = frame.locator("[data-role=chart-gap] .u-legend").inner_text()  # as shown
    assert "(raw)" not in legend and "mean over channels" in legend
    frame.locator("[data-role=chart-gap]").screenshot(path=str(SHOTS / "smoothing.png"))
    over = frame.locator("[data-role=chart-gap] .u-over")
    over.dblclick()
    full = frame.evaluate(x_range, "chart-gap")
    assert full[0] < 2 and full[1] > 119, full
    assert errors == []


def test_tensorboards_theme_menu_reaches_the_tab(server, browser):
    """On a light browser, TensorBoard's own theme menu (the header's
    light/dark button) set to Dark darkens the tab and redraws its charts;
    Light brings it back."""
    page, frame, errors, _ = open_tab(browser, server, color_scheme="light")
    background = "getComputedStyle(document.body).backgroundColor"
    assert frame.evaluate(background) == "rgb(255, 255, 255)"
    for choice, colour in (("Dark", "rgb(32, 33, 36)"), ("Light", "rgb(255, 255, 255)")):
        before = frame.evaluate("document.body.dataset.ready")
        page.locator("app-header-dark-mode-toggle button").first.click()
        page.get_by_role("menuitem", name=choice).click()
        frame.wait_for_function(f"{background} === '{colour}'", timeout=10000)
        frame.wait_for_function(f"document.body.dataset.ready !== '{before}'", timeout=15000)  # redrawn
        assert frame.evaluate("document.documentElement.classList.contains('dark')") == (choice == "Dark")
    assert errors == []


def test_sampled_data_banner(tmp_path, browser):
    """With --load_fast=false TensorBoard keeps 10 records per tensor tag: of a log with more, the tab
    says it was given a sample, and how to get all of it."""
    from conftest import write_many_records  # tests/conftest.py (imported here: other suites import this module)

    write_many_records(str(tmp_path))
    with tensorboard(str(tmp_path), "--load_fast=false", min_runs=1) as base:
        page, frame, errors, _ = open_tab(browser, base)
        frame.wait_for_selector("tr[data-layer=bn]")
        banner = frame.locator("[data-role=sampling]")
        banner.wait_for(state="visible")
        assert "--samples_per_plugin=bn_stats=0" in banner.text_content()
        assert errors == []


def test_names_are_inserted_as_text(tmp_path, browser):
    """Run and layer names are data: markup in them must show as text."""
    import numpy as np

    from tb_bnstats.write import summary

    run, layer = "<b>run</b>", "<img src=x onerror=document.body.dataset.pwned=1>"
    with summary.Writer(str(tmp_path / run)) as w:
        for step in range(1, 6):
            w.layer_moments(layer, step, batch_mean=np.ones(3), batch_var=np.ones(3), moving_mean=np.zeros(3),
                            moving_var=np.ones(3), updates=step, momentum=0.9, epsilon=1e-3, snapshot=step == 5)
    with tensorboard(str(tmp_path), min_runs=1) as base:
        page, frame, errors, _ = open_tab(browser, base)
        frame.click("button.bn-chip >> text=<b>run</b>")
        frame.wait_for_selector("[data-role=layers] td.name")
        assert frame.locator("[data-role=layers] td.name").first.text_content() == layer
        assert frame.locator("[data-role=layers] td.name img").count() == 0
        assert frame.evaluate("document.body.dataset.pwned") is None
        assert errors == []


def test_probe_gap_charts_show_the_logged_numbers(tmp_path, browser):
    """A run with the train/inference probe (scenario S8): the overview shows
    both modes' accuracy and loss on the probe batch, the output drift per
    layer and BN009; the layer view the probe chart. Numbers shown = numpy on
    the logged data."""
    import re

    import numpy as np

    import diagnosis_scenarios as scenarios
    import tb_bnstats

    logdir = str(tmp_path)
    scenarios.run_scenario("s8_shifted_eval", logdir)
    run = tb_bnstats.load(logdir)["s8_shifted_eval"]
    with tensorboard(logdir, min_runs=1) as base:
        page, frame, errors, _ = open_tab(browser, base)
        frame.click("button.bn-chip[data-run=s8_shifted_eval]")
        frame.wait_for_selector("[data-role=probe-accuracy] canvas")
        for metric in ("accuracy", "loss"):
            steps, train = run.metrics[f"probe_train/{metric}"]
            _, inference = run.metrics[f"probe_inference/{metric}"]
            assert points(frame, f"[data-role=probe-{metric}]") == 2 * len(steps)
            note = frame.locator(f"[data-role=probe-note-{metric}]").text_content()
            shown = [float(v) for v in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", note)]
            assert shown[0] == steps[-1]
            assert shown[1:] == pytest.approx([train[-1], inference[-1], train[-1] - inference[-1]], rel=1e-3)
        # The probe losses are in the loss chart too.
        legend = frame.locator("[data-role=loss] .u-legend").text_content()
        assert "probe_train/loss" in legend and "probe_inference/loss" in legend
        # Output drift per layer (depth order): the last probe's value.
        for layer in ("bn1", "bn2"):
            cell = frame.locator(f"tr[data-layer={layer}] [data-role=probe-drift]").text_content()
            drift = run.layers[layer].series["probe_output_drift"]
            assert float(cell) == pytest.approx(drift[np.isfinite(drift)][-1], rel=1e-3)
        frame.locator("[data-role=findings-list] li[data-code=BN009]").wait_for(state="visible")
        SHOTS.mkdir(parents=True, exist_ok=True)
        frame.locator("[data-role=probe-gap]").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "probe-gap.png"))
        # Layer view: the probe chart, 4 series at the probe steps.
        frame.click("tr[data-layer=bn1]")
        frame.wait_for_selector("[data-role=chart-probe] canvas")
        n_probe = int(np.isfinite(run.layers["bn1"].series["probe_output_drift"]).sum())
        assert points(frame, "[data-role=chart-probe]") == 4 * n_probe
        assert errors == []


def test_population_statistics_show_the_logged_numbers(tmp_path, browser):
    """A run with population statistics (BNStatsCallback(population_data=),
    momentum 0.99): the overview's "vs population" column and the layer
    view's population points and chart show what was logged."""
    import numpy as np

    import diagnosis_scenarios as scenarios
    import tb_bnstats
    from tb_bnstats import BNStatsCallback

    logdir = str(tmp_path)
    x, y = scenarios.digits(n=512)
    model = scenarios.dense_model(momentum=0.99)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[BNStatsCallback(
        tmp_path / "population_m0.99", verbose=0, population_data=(x, y), population_samples=512,
        population_every_n_steps=4, measure_budget=None)])  # every measurement when due, whatever it costs
    run = tb_bnstats.load(logdir)["population_m0.99"]
    with tensorboard(logdir, min_runs=1) as base:
        page, frame, errors, _ = open_tab(browser, base)
        frame.click("button.bn-chip[data-run=population_m0\\.99]")
        frame.wait_for_selector("tr[data-layer=bn2] [data-role=population-gap]")
        for layer in ("bn1", "bn2"):
            cell = frame.locator(f"tr[data-layer={layer}] [data-role=population-gap]").text_content()
            gap = run.layers[layer].series["population_mean_gap/max"]
            assert float(cell) == pytest.approx(gap[np.isfinite(gap)][-1], rel=1e-3)
        frame.click("tr[data-layer=bn1]")
        frame.wait_for_selector("[data-role=chart-population] canvas")
        series = run.layers["bn1"].series
        measured = int(np.isfinite(series["population_mean"]).sum())
        assert measured == 9  # steps 1, 4, 8, ..., 32 (the epoch ends, 16 and 32, are on the stride)
        assert points(frame, "[data-role=chart-population]") == 4 * measured
        bands = 2 * len(run.layers["bn1"].snapshot_steps)  # channels' p10 and p90 at the snapshot steps
        assert points(frame, "[data-role=chart-mean]") == 3 * len(run.layers["bn1"].steps) + measured + bands
        assert "population mean (PreciseBN)" in frame.locator("[data-role=chart-mean] .u-legend").text_content()
        # The chart's data: the population points where they were measured, nothing elsewhere.
        shown = frame.evaluate("(() => { const u = document.querySelector('[data-role=chart-mean]').__uplot;"
                               " const k = u.series.findIndex((s) => s.label === 'population mean (PreciseBN)');"
                               " return [u.data[0], u.data[k]]; })()")
        got = {int(s): v for s, v in zip(*shown) if v is not None}
        want = {int(s): v for s, v in zip(run.layers["bn1"].steps, series["population_mean"]) if np.isfinite(v)}
        assert sorted(got) == sorted(want) and all(got[s] == pytest.approx(want[s], rel=1e-5) for s in want)
        SHOTS.mkdir(parents=True, exist_ok=True)
        frame.locator("[data-role=chart-mean]").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "population.png"))
        assert errors == []
