"""A run of days in a real ``tensorboard --logdir`` at its default flags:
450,000 steps of a ResNet-50-sized model (53 BN layers), written through the
writer the callback uses, with one-step outliers planted at steps only this
script knows. Prints the log's size, how long TensorBoard takes to load it and
to answer the tab's first chart, the data server's memory, and whether each
planted outlier shows in /heatmap and /series.

Prints figures; it is not a pass/fail test (tests/pytorch/test_long_run.py is,
on a real 20,000-step run).

    python bench/long_run.py                          # 53 layers x 450,000 steps
    python bench/long_run.py --steps 20000 --layers 8 # a quick look

What it writes: per block of ``--block`` steps (the capture's drained blocks)
and per layer, synthetic batch moments (channel means near 0, variances near
1) and their moving averages (an exponential average at the layer's
momentum), handed to :meth:`tb_bnstats.Writer.layer_block` with the snapshot
steps :func:`tb_bnstats.recorder.state.choose_rows` picks -- the writer
thread's path in :meth:`tb_bnstats.recorder.Recorder._write_block` -- and
the train loss per step. At each planted step one layer's batch means are
moved ``--shift`` standard deviations.
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time
import urllib.parse

import numpy as np
from scipy import signal

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import routes  # noqa: E402
import scale  # noqa: E402
from tb_bnstats.format import metadata  # noqa: E402
from tb_bnstats.recorder import state  # noqa: E402
from tb_bnstats.write import summary  # noqa: E402


def ema(values, momentum, start):
    """``moving_t = m moving_{t-1} + (1 - m) values_t`` along axis 0, from ``start``."""
    out, _ = signal.lfilter([1 - momentum], [1, -momentum], values, axis=0, zi=momentum * start[None, :])
    return out


def write_run(run_dir, layers, steps, channels, block, planted, shift):
    """Writes the run; returns the seconds taken and each planted outlier's mean gap (max over channels)."""
    rng = np.random.default_rng(0)
    writer = summary.Writer(run_dir)
    infos = [metadata.LayerInfo(name=f"stage{i // 8}/block{i % 8}/bn", channels=channels, momentum=0.9, epsilon=1e-3,
                                depth=i, framework="custom") for i in range(layers)]
    moving = [(np.zeros(channels), np.ones(channels)) for _ in infos]
    gaps = {}
    last_snapshot = None
    started = time.time()
    for first in range(1, steps + 1, block):
        step_axis = np.arange(first, min(first + block, steps + 1))
        choice = state.choose_rows(step_axis, 1, 100, first - 1 if first > 1 else None, last_snapshot,
                                   final=step_axis[-1] == steps)
        if len(choice.snapshot_steps):
            last_snapshot = int(choice.snapshot_steps[-1])
        for i, info in enumerate(infos):
            mean = rng.normal(0.0, 0.05, (len(step_axis), channels))
            var = np.exp(rng.normal(0.0, 0.05, (len(step_axis), channels)))
            for layer, step in planted:
                if layer == i and first <= step < first + len(step_axis):
                    mean[step - first] += shift
            moving_mean = ema(mean, info.momentum, moving[i][0])
            moving_var = ema(var, info.momentum, moving[i][1])
            moving[i] = (moving_mean[-1], moving_var[-1])
            q = writer.layer_block(info, step_axis, mean, var, moving_mean, moving_var, step_axis,
                                   snapshot_steps=choice.snapshot_steps)
            for layer, step in planted:
                if layer == i and first <= step < first + len(step_axis):
                    gaps[(layer, step)] = float(np.max(q.mean_gap[step - first]))
        writer.metrics_block("train", step_axis, {"loss": 1.0 / np.sqrt(step_axis)})
        if step_axis[-1] % 50_000 < block:
            elapsed = time.time() - started
            print(f"  step {step_axis[-1]}/{steps}, {elapsed:.0f} s", flush=True)
    writer.close()
    return time.time() - started, infos, gaps


def check_outliers(base, infos, gaps):
    """Each planted outlier: does the heat map's bin of its step show at least its value (two in one bin
    show the larger), and is it a point of its layer's /series at its step with its value?"""
    _, body = routes.get(base + "/heatmap?run=big&measure=mean_gap/max&bins=200")
    heatmap = json.loads(body)
    edges = np.array(heatmap["step_edges"])
    rows = {name: np.array([np.nan if v is None else v for v in row])
            for name, row in zip(heatmap["layers"], heatmap["values"])}
    results = []
    for (layer, step), gap in sorted(gaps.items(), key=lambda kv: kv[0][1]):
        name = infos[layer].name
        row = rows[name]
        at = int(np.searchsorted(edges, step, side="right") - 1)
        in_heatmap = bool(row[at] >= gap * (1 - 1e-5))
        _, body = routes.get(base + f"/series?run=big&layer={urllib.parse.quote(name, safe='')}"
                             f"&quantities=mean_gap/max&points=1000")
        points = json.loads(body)["series"]["mean_gap/max"]
        steps = np.array(points["steps"])
        values = np.array([np.nan if v is None else v for v in points["values"]])
        in_series = bool(np.any((steps == step) & np.isclose(values, gap, rtol=1e-5)))
        results.append((name, step, gap, in_heatmap, in_series))
    return results, heatmap["sampling"]


def screenshot(base, layer, path):
    """The tab's overview and the layer's detail of ``layer`` in Debian's chromium (Playwright), saved as
    ``path`` (the overview) and ``path`` with ``-layer`` before its suffix."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    root = base.split("/data/plugin/")[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(root + "/#bn_stats")
        frame = page.wait_for_selector("iframe", timeout=60000).content_frame()
        frame.wait_for_selector("[data-role=heatmap] canvas", timeout=60000)
        frame.wait_for_selector("[data-role=loss] canvas", timeout=60000)
        page.screenshot(path=str(path))
        frame.click(f"tr[data-layer='{layer}']")
        frame.wait_for_selector("[data-role=chart-mean] canvas", timeout=60000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(path.with_name(path.stem + "-layer" + path.suffix)))
        browser.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=53)
    parser.add_argument("--steps", type=int, default=450_000)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--block", type=int, default=1000)
    parser.add_argument("--outliers", type=int, default=5)
    parser.add_argument("--shift", type=float, default=40.0, help="an outlier's batch mean shift, in std")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    parser.add_argument("--screenshot", type=pathlib.Path, help="save the tab's overview and the first outlier's "
                        "layer there (PNG; the layer view with -layer before the suffix)")
    args = parser.parse_args()

    rng = np.random.default_rng()
    planted = [(int(rng.integers(args.layers)), int(rng.integers(args.steps // 10, args.steps - 1)))
               for _ in range(args.outliers)]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tb_bnstats_long_"))
    run_dir = tmp / "logs" / scale.RUN
    print(f"writing {args.layers} layers x {args.steps} steps ({args.channels} channels) to {run_dir}", flush=True)
    seconds, infos, gaps = write_run(str(run_dir), args.layers, args.steps, args.channels, args.block, planted,
                                     args.shift)
    size = scale.dir_size(run_dir)
    per = size / (args.layers * args.steps)
    print(f"written in {seconds:.0f} s: {size / 1e6:.1f} MB, {per:.1f} bytes per layer per step")

    started = time.time()
    proc, _, base = routes.start_tensorboard(str(tmp / "logs"), [], args.layers, args.steps)
    load = time.time() - started
    try:
        first_chart = time.perf_counter()
        for route in ("/runs", "/overview?run=big", "/heatmap?run=big&measure=mean_gap/max&bins=200"):
            routes.get(base + route)
        first_chart = time.perf_counter() - first_chart
        memory, parts = scale.tree_memory(proc.pid)
        results, sampling = check_outliers(base, infos, gaps)
        if args.screenshot:
            screenshot(base, results[0][0], args.screenshot)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"tensorboard (default flags): loaded in {load:.0f} s; first chart (/runs, /overview, /heatmap) "
          f"{first_chart:.1f} s; memory {memory['rss']:.0f} MB resident ({parts}); sampled: {sampling['sampled']}")
    print("| layer | step | mean gap | in /heatmap (its bin) | in /series (its step) |")
    print("|---|---|---|---|---|")
    for name, step, gap, in_heatmap, in_series in results:
        print(f"| {name} | {step} | {gap:.1f} | {'yes' if in_heatmap else 'NO'} | {'yes' if in_series else 'NO'} |")
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
