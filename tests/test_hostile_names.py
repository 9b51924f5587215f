"""Names are data. Layer and run names holding HTML, JavaScript, quotes,
right-to-left marks, emoji, combining characters or 10,000 characters go
through the writer, the reader and every route unchanged (Hypothesis), and the
tab in a real browser shows them as text: no script in them runs."""

import json
import os
import urllib.parse

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_client
from tb_bnstats.read import reader
from tb_bnstats.write import summary
from test_e2e_tab import CHROMIUM, open_tab, tensorboard

P = "/data/plugin/bn_stats"
# Run directory names: anything but "/" and NUL.
HOSTILE_RUN = "<img src=x onerror=\"window.__pwned='run';document.title='pwned'\"> \"q\" 'a' `b` \u202eRTL 🙂 e\u0301"
HOSTILE_LAYERS = [
    "<script>window.__pwned='script'</script>",
    "<img src=x onerror=\"window.__pwned='img';document.title='pwned'\">",
    "\"double\" 'single' `back${window.__pwned='tpl'}`",
    "\u202edesrever\u202c \u05e9\u05dc\u05d5\u05dd \u0627\u0644\u0633\u0644\u0627\u0645",
    "🙂🔥 z\u0351\u0352\u0357a\u0301\u0301 \U0001F469\u200d\U0001F4BB",
    "javascript:window.__pwned='href'",
    "L" * 10000,
]


def write_layers(run_dir, names, steps=4, nan_layer=None):
    with summary.Writer(str(run_dir)) as w:
        for step in range(1, steps + 1):
            for depth, name in enumerate(names):
                bm = np.array([np.nan, 1.0]) if name == nan_layer and step >= 3 else np.array([0.5, 1.0])
                w.layer_moments(name, step, batch_mean=bm, batch_var=np.ones(2), moving_mean=np.zeros(2),
                                moving_var=np.ones(2), updates=step, momentum=0.9, epsilon=1e-3, depth=depth,
                                snapshot=step == steps)
            w.metrics("train", {"loss": 1.0 / step}, step)


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60) | st.sampled_from(HOSTILE_LAYERS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(layer_names=st.lists(names, min_size=1, max_size=3, unique=True))
def test_any_layer_name_round_trips_through_load_and_every_route(tmp_path_factory, layer_names):
    logdir = tmp_path_factory.mktemp("names")
    write_layers(logdir / "run", layer_names)
    loaded = reader.load(logdir)["run"]
    assert set(loaded.layers) == set(layer_names)
    client, _ = make_client(str(logdir))
    body = json.loads(client.get(P + "/runs").get_data(as_text=True))
    assert [lay["name"] for lay in body["runs"][0]["layers"]] == layer_names  # depth order
    for name in layer_names:
        q = urllib.parse.urlencode({"run": "run", "layer": name})
        for route in ("/series", "/snapshot", "/bands", "/compare"):
            r = client.get(f"{P}{route}?{q}")
            assert r.status_code == 200, (route, name, r.get_data(as_text=True)[:200])
            body = json.loads(r.get_data(as_text=True))
            assert body.get("layer", name) == name
        r = client.get(f"{P}/series?{q}&format=csv")
        assert r.status_code == 200 and "\n" not in r.headers["Content-Disposition"]
    assert json.loads(client.get(P + "/overview?run=run").get_data(as_text=True))["layers"][0]["name"] == layer_names[0]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")
def test_hostile_names_show_literally_and_run_no_script(tmp_path):
    from playwright.sync_api import sync_playwright

    from test_e2e_tab import CHROMIUM_ARGS

    logdir = tmp_path / "logs"
    # NaN in one layer's batch mean from step 3: BN007 names it in the findings list.
    write_layers(logdir / HOSTILE_RUN, HOSTILE_LAYERS, steps=5, nan_layer=HOSTILE_LAYERS[1])
    for name in ("a", "b"):  # the tensorboard helper waits for 3 runs
        write_layers(logdir / name, ["bn"])
    with tensorboard(str(logdir)) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page, frame, errors, _ = open_tab(browser, base)
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        chips = frame.locator("button.bn-chip")
        labels = [chips.nth(i).locator("[data-role=run-name]").text_content() for i in range(chips.count())]
        assert HOSTILE_RUN in labels, labels
        chips.nth(labels.index(HOSTILE_RUN)).click()
        frame.wait_for_function(
            f"document.querySelectorAll('[data-role=layers] td.name').length === {len(HOSTILE_LAYERS)}")
        cells = frame.locator("[data-role=layers] td.name").all_text_contents()
        assert cells == HOSTILE_LAYERS  # literally, in depth order, the 10,000 characters included
        rows = frame.locator("[data-role=layers] tbody tr")
        assert rows.nth(1).get_attribute("data-layer") == HOSTILE_LAYERS[1]
        # The diagnosis: BN007 names the NaN layer, as text.
        finding = frame.locator("[data-role=findings-list] li[data-code=BN007]")
        finding.wait_for(state="visible")
        assert HOSTILE_LAYERS[1] in finding.text_content()
        # The layer view of each hostile layer, then the compare view.
        for i in range(len(HOSTILE_LAYERS)):
            frame.locator("[data-role=layers] tbody tr").nth(i).click()
            frame.wait_for_selector("[data-role=chart-mean] canvas")
            assert frame.locator("[data-role=layer-select]").input_value() == HOSTILE_LAYERS[i]
            frame.locator("button[data-view=overview]").click()
            frame.wait_for_selector("[data-role=layers] td.name")
        frame.click("button[data-view=compare]")
        frame.wait_for_selector("[data-role=compare] canvas, [data-role='compare-mean_gap/max'] canvas")
        page.wait_for_timeout(500)
        for ctx in (page, frame):
            assert ctx.evaluate("window.__pwned") is None
            assert ctx.evaluate("document.title") != "pwned"
            assert ctx.evaluate("document.querySelectorAll('img[src=x], svg[onload], [onerror]').length") == 0
        assert frame.evaluate("[...document.scripts].every(s => !s.textContent.includes('__pwned'))")
        assert dialogs == [] and errors == []
        browser.close()
