"""Route latency of the BN Convergence tab and the browser's time to first chart.

Prints figures; it is not a pass/fail test.

    python bench/routes.py                       # 100 layers x 20,000 steps (cached after the first run)
    python bench/routes.py --steps 2000          # a smaller, honest scale
    python bench/routes.py --all-samples         # also with --samples_per_plugin=bn_stats=0
    python bench/routes.py --no-browser          # routes only

What it does:

1. Writes one run of ``--layers`` BN layers x ``--steps`` logged steps (every
   layer's 21 scalar series each step, so layers x steps x 21 points; 100 x
   20,000 is 42M scalar points) plus per-channel snapshots every
   ``--snapshot-every`` steps and a train loss, into a cache directory
   (``--cache``, default ``~/.cache/tb_bnstats_bench``), once. It uses
   :class:`tb_bnstats.Writer` (same tags, metadata and event files)
   but computes the series for all steps of a layer at once with the functions of
   :mod:`tb_bnstats.quantities` instead of calling ``Writer.layer`` per step,
   which would take about an hour at this size (about 2 ms per layer-step).
2. Starts ``tensorboard --logdir <cache>`` with default flags (the data server,
   which keeps 1000 points per scalar tag) and waits until every point is loaded.
3. Times each route, wall clock, from a client on the same machine: the first
   call after the plugin's 2 s tag-index cache expired ("cold") and the median
   and max of ``--repeat`` more calls ("warm").
4. Opens the tab in chromium (Playwright) and reports the time from navigation
   to the first chart drawn, and inside the tab from the iframe's start.
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tb_bnstats import quantities  # noqa: E402
from tb_bnstats.format import metadata  # noqa: E402
from tb_bnstats.write import events, summary  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- writing --------------------------------------------------------------------------

def layer_series(info, steps, rng, snap_index):
    """Every LAYER_SERIES value of one layer for all steps, shape [steps] each,
    and the per-channel snapshot rows at the indices ``snap_index``, from
    simulated moments."""
    n, c = len(steps), info.channels
    true_mean = rng.normal(1.0, 1.0, c)
    true_var = rng.uniform(0.5, 3.0, c)
    bm = true_mean + rng.normal(0, 0.1, (n, c))
    bv = true_var * rng.uniform(0.85, 1.15, (n, c))
    spike = rng.integers(0, n)
    bm[spike] += 10.0  # one spike per layer, for the eye
    m = info.momentum
    # moving = m * moving + (1-m) * batch, from init (0, 1): a linear filter.
    mm = np.empty_like(bm)
    mv = np.empty_like(bv)
    a, b = np.zeros(c), np.ones(c)
    for i in range(n):  # n x c, cheap enough in numpy rows
        a = a * m + bm[i] * (1 - m)
        b = b * m + bv[i] * (1 - m)
        mm[i], mv[i] = a, b
    t = np.asarray(steps, np.float64)[:, None]
    w = m ** t
    dm = (mm - w * info.init_mean) / (1 - w)
    dv = (mv - w * info.init_var) / (1 - w)
    eps = info.epsilon
    gap = quantities.mean_gap(bm, bv, mm, eps)
    lvr = quantities.log_var_ratio(bv, mv, eps)
    kl = quantities.symmetric_kl(bm, bv, mm, mv, eps)
    out = {"batch_mean": bm.mean(1), "moving_mean": mm.mean(1), "debiased_mean": dm.mean(1),
           "batch_var": bv.mean(1), "moving_var": mv.mean(1), "debiased_var": dv.mean(1)}
    for name, vals in (("mean_gap", gap), ("abs_log_var_ratio", np.abs(lvr)), ("sym_kl", kl)):
        p50, p90 = np.percentile(vals, [50, 90], axis=1)
        out[f"{name}/mean"], out[f"{name}/p50"] = vals.mean(1), p50
        out[f"{name}/p90"], out[f"{name}/max"] = p90, vals.max(1)
    out["log_var_ratio/mean"] = lvr.mean(1)
    out["convergence"] = 1 - m ** t[:, 0]
    out["updates"] = t[:, 0]
    rows = {"batch_mean": bm, "batch_var": bv, "moving_mean": mm, "moving_var": mv, "debiased_mean": dm,
            "debiased_var": dv, "mean_gap": gap, "log_var_ratio": lvr}
    snaps = {int(i): np.stack([rows[r][i] for r in metadata.SNAPSHOT_ROWS]) for i in snap_index}
    return out, snaps


# Every layer series but the pretrained-start ones (START_SERIES: only layers that start from pretrained statistics).
WRITTEN = tuple(q for q in metadata.LAYER_SERIES if q not in metadata.START_SERIES)


def write_run(run_dir, layers, steps, channels, snapshot_every):
    rng = np.random.default_rng(0)
    writer = summary.Writer(run_dir, flush_secs=30)
    step_axis = np.arange(1, steps + 1)
    infos = [metadata.LayerInfo(name=f"block{i // 4:02d}/conv{i % 4}/bn", channels=channels,
                                momentum=(0.9, 0.99, 0.999)[i % 3], epsilon=1e-3, depth=i, framework="custom")
             for i in range(layers)]
    started = time.time()
    computed = []
    snap_index = [k for k, step in enumerate(step_axis) if step % snapshot_every == 0 or step == steps]
    for info in infos:
        series, rows = layer_series(info, step_axis, rng, snap_index)
        computed.append((info, {q: series[q].astype(np.float32).tolist() for q in WRITTEN}, rows))
    print(f"  computed the quantities in {time.time() - started:.1f} s", flush=True)
    loss = (2.0 * np.exp(-step_axis / (steps / 4)) + 0.05 * rng.random(steps)).tolist()
    for k, step in enumerate(step_axis):
        values = []
        for info, series, rows in computed:
            for q in WRITTEN:
                values.append(writer._value(metadata.layer_tag(info.name, q),
                                            lambda info=info, q=q: metadata.layer_series_metadata(info, q),
                                            tensor=events.scalar_tensor(series[q][k])))
            if k in rows:
                snap = rows[k]
                values.append(writer._value(metadata.layer_tag(info.name, metadata.CHANNELS_QUANTITY),
                                            lambda info=info: metadata.layer_channels_metadata(info),
                                            tensor=summary._tensor_proto(snap)))
        writer._emit(int(step), values)
        writer.metrics("train", {"loss": loss[k]}, int(step))
        if k % 2000 == 0 and k:
            rate = k / (time.time() - started)
            print(f"  step {k}/{steps}, {rate:.0f} steps/s, ETA {(steps - k) / rate:.0f} s", flush=True)
    writer.close()
    return time.time() - started


def ensure_data(cache, layers, steps, channels, snapshot_every):
    logdir = pathlib.Path(cache).expanduser() / f"routes-{layers}x{steps}x{channels}"
    done = logdir / "DONE"
    if done.exists():
        print(f"using cached event files in {logdir} (written in {done.read_text().strip()})")
        return str(logdir)
    if logdir.exists():
        shutil.rmtree(logdir)
    print(f"writing {layers} layers x {steps} steps x {len(WRITTEN)} series "
          f"= {layers * steps * len(WRITTEN) / 1e6:.1f}M scalar points into {logdir} (once)", flush=True)
    took = write_run(str(logdir / "big"), layers, steps, channels, snapshot_every)
    size = sum(f.stat().st_size for f in logdir.rglob("*") if f.is_file())
    done.write_text(f"{took:.0f} s, {size / 1e6:.0f} MB\n")
    print(f"  written in {took:.0f} s, {size / 1e6:.0f} MB")
    return str(logdir)


# -- serving ------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        body = r.read()
    return time.perf_counter() - t, body


def start_tensorboard(logdir, flags, layers, steps):
    port = free_port()
    exe = pathlib.Path(sys.executable).with_name("tensorboard")
    log = open(os.path.join(os.path.dirname(logdir), f"tensorboard-{port}.log"), "w")
    proc = subprocess.Popen([str(exe), "--logdir", logdir, "--port", str(port), "--host", "127.0.0.1", *flags],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    base = f"http://127.0.0.1:{port}/data/plugin/bn_stats"
    started = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited, see {log.name}")
        try:
            _, body = get(base + "/runs")
            runs = json.loads(body)["runs"]
            if runs and len(runs[0]["layers"]) == layers and all(l["max_step"] == steps for l in runs[0]["layers"]):
                _, body = get(base + "/overview?run=big")
                ov = json.loads(body)
                if all(l["latest_step"] == steps for l in ov["layers"]):
                    break
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(1.0)
    print(f"  tensorboard {' '.join(flags) or '(default flags)'}: all {layers} layers loaded to step {steps} "
          f"{time.time() - started:.0f} s after start")
    return proc, port, base


def time_routes(base, layers, repeat):
    layer = urllib.parse.quote("block00/conv1/bn", safe="")
    other = urllib.parse.quote(f"block{(layers - 1) // 4:02d}/conv{(layers - 1) % 4}/bn", safe="")
    routes = [
        # First: its first call diagnoses the run (then cached until the data change).
        ("/findings (the run's first diagnosis)", "/findings?run=big"),
        ("/runs", "/runs"),
        ("/overview", "/overview?run=big"),
        ("/heatmap (200 bins)", "/heatmap?run=big&bins=200"),
        ("/series 1 layer, 21 series, 1200 pts", f"/series?run=big&layer={layer}&points=1200"),
        ("/series 1 layer, mean_gap/max, 1200 pts",
         f"/series?run=big&layer={other}&quantities=mean_gap/max&points=1200"),
        ("/snapshot", f"/snapshot?run=big&layer={layer}&step=10000"),
        ("/bands", f"/bands?run=big&layer={layer}"),
        ("/loss", "/loss?run=big&points=1500"),
        ("/compare (1 run)", f"/compare?run=big&layer={layer}&quantity=moving_var"),
        ("/series csv", f"/series?run=big&layer={layer}&points=1200&format=csv"),
    ]
    print(f"  {'route':44s} {'cold ms':>8s} {'warm med':>9s} {'warm max':>9s} {'KB':>8s}  note")
    sampled_note = None
    for name, path in routes:
        time.sleep(2.2)  # past the plugin's 2 s tag-index cache: the first call lists the tags again
        times, body = [], b""
        for _ in range(repeat + 1):
            dt, body = get(base + path)
            times.append(dt * 1000)
        cold, warm = times[0], times[1:]
        note = ""
        if path.startswith(("/series", "/heatmap")) and "format=csv" not in path:
            d = json.loads(body)
            s = d.get("sampling", {})
            if "series" in d and isinstance(d["series"], dict):
                stored = max(v.get("stored_points", 0) for v in d["series"].values())
                note = f"{stored} points stored per tag"
            note += " · sampled" if s.get("sampled") else " · all points"
            sampled_note = sampled_note or (s.get("message") if s.get("sampled") else None)
        print(f"  {name:44s} {cold:8.1f} {statistics.median(warm):9.1f} {max(warm):9.1f} "
              f"{len(body) / 1024:8.1f}  {note}")
    if sampled_note:
        print(f"  the tab's banner: {sampled_note}")


def time_browser(port, repeat):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for _ in range(repeat):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/#bn_stats")
            frame = page.wait_for_selector("iframe", timeout=60000).content_frame()
            frame.wait_for_selector("[data-role=heatmap] canvas", timeout=120000)
            total = time.perf_counter() - t0
            inside = frame.evaluate(
                "(() => { const m = performance.getEntriesByName('bn-first-chart')[0]; "
                "return m ? m.startTime : null; })()")
            results.append((total, inside))
            page.close()
        browser.close()
    for i, (total, inside) in enumerate(results):
        print(f"  load {i + 1}: {total * 1000:.0f} ms from navigation to TensorBoard page with the first chart drawn; "
              f"{inside:.0f} ms inside the tab (iframe start -> first chart)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--snapshot-every", type=int, default=500)
    ap.add_argument("--cache", default="~/.cache/tb_bnstats_bench")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--all-samples", action="store_true", help="also time with --samples_per_plugin=bn_stats=0")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    print(f"scale: {args.layers} layers x {args.steps} steps x {len(WRITTEN)} scalar series per layer "
          f"= {args.layers * args.steps * len(WRITTEN) / 1e6:.1f}M points; {args.channels} channels; "
          f"snapshot every {args.snapshot_every} steps")
    logdir = ensure_data(args.cache, args.layers, args.steps, args.channels, args.snapshot_every)
    configs = [[]] + ([["--samples_per_plugin=bn_stats=0"]] if args.all_samples else [])
    for flags in configs:
        print(f"\n== tensorboard {' '.join(flags) or '(default flags: data server, 1000 points per scalar tag)'}")
        proc, port, base = start_tensorboard(logdir, flags, args.layers, args.steps)
        try:
            time_routes(base, args.layers, args.repeat)
            if not args.no_browser:
                time_browser(port, 3)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
