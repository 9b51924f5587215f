"""Damaged event files: cut in the middle of a record, a bad checksum,
garbage bytes in the middle, empty. What is readable is shown, what is not is
said (a warning from ``tb_bnstats.load``, ``file_problems`` in ``/runs`` and
the server log), and every route keeps answering."""

import glob
import json
import os
import struct
import time
import urllib.request
import warnings

import numpy as np

import tb_bnstats
from conftest import make_client
from tb_bnstats.read import integrity
from tb_bnstats.write import summary
from test_e2e_tab import CHROMIUM, CHROMIUM_ARGS, SHOTS, open_tab, tensorboard

STEPS = 30
CUT = 15  # the damage is in the record of this step


def write_run(logdir, run, steps=STEPS):
    """One layer whose batch mean is the step number (recomputable), a
    record per step (flushed after each: its layer log's record of it)."""
    with summary.Writer(os.path.join(logdir, run), flush_secs=60) as w:
        for s in range(1, steps + 1):
            w.layer_moments("bn", s, batch_mean=np.full(3, float(s)), batch_var=np.ones(3),
                            moving_mean=np.zeros(3), moving_var=np.ones(3), updates=s, momentum=0.9, epsilon=1e-3)
            w.flush()
    (path,) = glob.glob(os.path.join(logdir, run, "*tfevents*"))
    return path


def record_offsets(data):
    """Byte offset of every TFRecord in ``data`` (independent of eventfile.py)."""
    out, off = [], 0
    while off < len(data):
        out.append(off)
        off += 12 + struct.unpack("<Q", data[off:off + 8])[0] + 4
    assert off == len(data)
    return out


def damaged_logdir(logdir):
    """``good`` plus one run per kind of damage; returns ``{run: offset of
    the damaged record}`` and the intact bytes."""
    good = write_run(logdir, "good")
    data = open(good, "rb").read()
    offsets = record_offsets(data)
    assert len(offsets) == STEPS + 1  # the file_version record, then one per step
    at = offsets[CUT]  # the record of step CUT
    damage = {
        "cut": data[:at + 20],  # ends 20 bytes into a record
        "bad_length_crc": data[:at + 9] + bytes([data[at + 9] ^ 0xFF]) + data[at + 10:],
        "bad_data_crc": data[:at + 17] + bytes([data[at + 17] ^ 0xFF]) + data[at + 18:],
        "garbage": data[:at] + bytes(range(7, 107)) + data[at:],
        "empty": b"",
    }
    for run, content in damage.items():
        with open(write_run(logdir, run), "wb") as f:
            f.write(content)
    old = time.time() - 2 * integrity.STALE_S  # not being written any more
    for path in glob.glob(os.path.join(logdir, "*", "*tfevents*")):
        os.utime(path, (old, old))
    return at, data


def test_check_records_finds_each_kind_of_damage(tmp_path):
    at, data = damaged_logdir(str(tmp_path))
    got = {os.path.basename(os.path.dirname(p)): integrity.check_records(p)
           for p in glob.glob(str(tmp_path / "*" / "*tfevents*"))}
    assert got["good"] == (len(data), len(data), None)
    assert got["cut"] == (at, at + 20, "incomplete")
    assert got["bad_length_crc"] == (at, len(data), "bad_length")
    assert got["garbage"] == (at, len(data) + 100, "bad_length")
    assert got["bad_data_crc"] == (len(data), len(data), None)  # payload checksums are not checked here
    assert got["empty"] == (0, 0, None)
    # A deadline in the past stops at once, with no problem claimed.
    path = glob.glob(str(tmp_path / "garbage" / "*tfevents*"))[0]
    assert integrity.check_records(path, 0, deadline=time.monotonic() - 1) == (0, len(data) + 100, None)


def test_load_returns_what_is_readable_and_warns_about_the_rest(tmp_path):
    at, data = damaged_logdir(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = tb_bnstats.load(tmp_path)
    messages = sorted(str(w.message) for w in caught if "tb_bnstats" in str(w.message))
    by_run = {m.split("/")[0].split(": ")[1]: m for m in messages}
    assert sorted(by_run) == ["bad_data_crc", "bad_length_crc", "cut", "empty", "garbage"], messages
    assert "ends inside a record" in by_run["cut"] and "its last 20 bytes are not shown" in by_run["cut"]
    assert f"corrupted record at byte {at} (bad length checksum)" in by_run["bad_length_crc"]
    assert f"corrupted record at byte {at} (bad length checksum)" in by_run["garbage"]
    assert "bad data checksum" in by_run["bad_data_crc"]
    assert "is empty (0 bytes)" in by_run["empty"]

    assert "empty" not in runs  # nothing to read: no run
    good = runs["good"].layers["bn"]
    np.testing.assert_array_equal(good.steps, np.arange(1, STEPS + 1))
    for run in ("cut", "bad_length_crc", "bad_data_crc", "garbage"):
        layer = runs[run].layers["bn"]
        # Every record before the damaged one, with the values written.
        np.testing.assert_array_equal(layer.steps, np.arange(1, CUT), err_msg=run)
        for q, values in layer.series.items():
            np.testing.assert_array_equal(values, good.series[q][:CUT - 1], err_msg=f"{run} {q}")

    # One run only: only its warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tb_bnstats.load(tmp_path, run="cut")
    assert [str(w.message).split("/")[0] for w in caught if "tb_bnstats" in str(w.message)] == ["tb_bnstats: cut"]


def test_a_file_being_written_is_not_a_problem(tmp_path):
    """A trailing record cut off in a file written to right now is a write in
    progress: no warning, and the next check picks up from the cut."""
    path = write_run(str(tmp_path), "live")
    data = open(path, "rb").read()
    offsets = record_offsets(data)
    with open(path, "wb") as f:
        f.write(data[:offsets[CUT] + 20])
    check = integrity.EventFileCheck(tmp_path)
    assert check.problems() == []
    with open(path, "ab") as f:
        f.write(data[offsets[CUT] + 20:])
    assert check.problems() == []
    assert check._state[path] == (len(data), len(data), None)


def get(client, url, status=200):
    r = client.get("/data/plugin/bn_stats" + url)
    assert r.status_code == status, (url, r.status_code, r.get_data(as_text=True)[:300])
    return json.loads(r.get_data(as_text=True))


ROUTES = ("/overview?run={run}", "/heatmap?run={run}", "/series?run={run}&layer=bn", "/loss?run={run}",
          "/findings?run={run}", "/compare?run={run}&run=good&layer=bn", "/series?run={run}&layer=bn&format=csv")


def test_plugin_routes_serve_what_is_readable_and_list_the_problems(tmp_path, caplog):
    at, _ = damaged_logdir(str(tmp_path))
    client, _ = make_client(str(tmp_path))
    with caplog.at_level("WARNING", logger="tb_bnstats"):
        body = get(client, "/runs")
        get(client, "/runs")  # each problem is logged once
    problems = {p["run"]: p for p in body["file_problems"]}
    # The Python reader's own data checksum failure is not seen by the framing check.
    assert sorted(problems) == ["bad_length_crc", "cut", "empty", "garbage"]
    assert problems["cut"]["kind"] == "incomplete" and problems["cut"]["offset"] == at
    assert problems["garbage"]["kind"] == "bad_length" and problems["garbage"]["offset"] == at
    assert problems["empty"]["kind"] == "empty"
    logged = [r.getMessage() for r in caplog.records if r.name == "tb_bnstats"]
    assert len(logged) == 4 and all(m.startswith("bn_stats: ") for m in logged), logged
    runs = {r["run"]: r for r in body["runs"]}
    assert runs["good"]["max_step"] == STEPS
    for run in ("cut", "bad_length_crc", "bad_data_crc", "garbage"):
        assert runs[run]["max_step"] == CUT - 1
        for url in ROUTES:
            r = client.get("/data/plugin/bn_stats" + url.format(run=run))
            assert r.status_code == 200, (url, r.get_data(as_text=True))
        assert get(client, f"/series?run={run}&layer=bn&quantities=mean_gap/max")["series"]["mean_gap/max"][
            "steps"] == list(range(1, CUT))


def http_get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode("utf-8")
        return r.status, (text if "format=csv" in url else json.loads(text))


def test_real_tensorboard_serves_damaged_logs_and_reads_a_completed_record(tmp_path):
    """The real ``tensorboard`` (its Rust data server): damaged files answer
    with what is readable; a record cut off and completed later is read."""
    logdir = str(tmp_path / "logs")
    at, data = damaged_logdir(logdir)
    live = write_run(logdir, "live")
    with open(live, "wb") as f:
        f.write(data[:at + 20])
    with tensorboard(logdir, "--reload_interval=1") as base:
        api = base + "/data/plugin/bn_stats"
        status, body = http_get(api + "/runs")
        assert {p["run"] for p in body["file_problems"]} == {"bad_length_crc", "cut", "empty", "garbage"}
        runs = {r["run"]: r["max_step"] for r in body["runs"]}
        assert runs["good"] == STEPS
        assert runs["cut"] == runs["bad_length_crc"] == runs["garbage"] == CUT - 1
        for run in ("cut", "bad_length_crc", "bad_data_crc", "garbage", "live"):
            for url in ROUTES:
                status, _ = http_get(api + url.format(run=run))
                assert status == 200
        # The tab says which files it cannot read completely and shows the rest.
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page, frame, errors, _ = open_tab(browser, base)
            banner = frame.locator("[data-role=file-problems]")
            banner.wait_for(state="visible")
            assert banner.text_content().startswith("4 event files could not be read completely.")
            items = banner.locator("li")
            listed = {items.nth(i).get_attribute("data-run"): items.nth(i).text_content() for i in range(items.count())}
            assert sorted(listed) == ["bad_length_crc", "cut", "empty", "garbage"]
            assert banner.text_content().endswith(items.last.text_content())  # the list, nothing after it
            assert listed["cut"].startswith("cut/") and "ends inside a record" in listed["cut"]
            assert f"corrupted record at byte {at}" in listed["garbage"]
            frame.click("button.bn-chip[data-run=good]")
            frame.wait_for_selector("tr[data-layer=bn]")
            assert f"last step {STEPS}" in frame.locator(".bn-card h3").first.text_content()
            frame.click("button.bn-chip[data-run=cut]")
            frame.wait_for_function(
                "document.querySelector('.bn-card h3') && "
                f"document.querySelector('.bn-card h3').textContent.includes('last step {CUT - 1}')")
            assert frame.locator("[data-role=file-problems] li").first.get_attribute("data-run") == "cut"
            page.screenshot(path=str(SHOTS / "damaged-files.png"))
            assert errors == []
            browser.close()
        # The writer of "live" finishes its record: TensorBoard retries the cut record.
        with open(live, "ab") as f:
            f.write(data[at + 20:])
        deadline = time.time() + 60
        while {r["run"]: r["max_step"] for r in http_get(api + "/runs")[1]["runs"]}["live"] != STEPS:
            assert time.time() < deadline, "tensorboard did not read the completed record"
            time.sleep(0.5)
        (log,) = glob.glob(os.path.join(logdir, "..tensorboard-*.log"))
        text = open(log).read()
        assert "bn_stats: garbage/" in text and "bn_stats: cut/" in text, text[-2000:]


def test_a_step_read_in_part_is_left_out_of_the_series_and_the_diagnosis():
    """TensorBoard may read a run being written between two records of one
    step: the step whose series are not all there yet is cut (it comes back
    whole at the next reload), so no NaN reaches the diagnosis (a 500 of
    /findings, seen with a real training run)."""
    from tb_bnstats import diagnosis
    from tb_bnstats.format import metadata, records

    info = metadata.LayerInfo(name="bn", channels=2, momentum=0.9, epsilon=1e-3)
    steps = np.arange(1, 6)
    series = {q: (steps, np.linspace(0.1, 0.5, 5)) for q in metadata.LAYER_SERIES}
    series["updates"] = (steps, steps.astype(float))
    series["mean_gap/p50"] = (np.arange(1, 7), np.linspace(0.1, 0.6, 6))  # step 6: this one record read so far
    run = records.run_data({"bn": info}, {"bn": series})
    layer = run.layers["bn"]
    np.testing.assert_array_equal(layer.steps, steps)
    assert all(np.isfinite(values).all() for values in layer.series.values())
    diagnosis.diagnose_run("live", run)  # no exception
