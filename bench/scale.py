"""Scale and memory: a run of many BN layers and many logged steps in a real
``tensorboard --logdir``, the Writer's throughput, and the callback's memory.

Prints figures; it is not a pass/fail test (tests/test_memory_bounds.py is).

    python bench/scale.py                                  # 200 layers x 5k, 20k, 50k steps
    python bench/scale.py --steps 5000,20000,50000,100000  # the 100k run too (~22 GB on disk)
    python bench/scale.py --only writer,callback           # no TensorBoard, a few minutes
    python bench/scale.py --all-samples-steps 2000,5000    # also bn_stats=0 (all points kept)

What it does:

1. ``writer``: the throughput of :class:`tb_bnstats.Writer`: records/s
   and MB/s of ``Writer.layer`` one step a call, of ``Writer.layer_block``
   on blocks of steps (the callback's path: quantities + events + records)
   and of the events alone, and what one per-layer record is made of (tag
   strings vs values).
2. ``server``: for each ``--steps`` size, writes one run of ``--layers`` layers
   (cached in ``--cache``; deleted after unless ``--keep``): the events of the
   real Writer (metadata records, snapshots every ``--snapshot-every`` steps,
   the train loss), one event per layer per step as the callback writes them.
   The per-step layer records are written with ``Writer.layer_series_rows``
   in blocks of 1,000 steps (the templates the callback's writer fills). The values cycle through a ``--period``-step
   simulation (:func:`routes.layer_series`); ``updates`` and ``convergence``
   follow the step. Then starts ``tensorboard --logdir`` (default flags, plus
   ``--load_fast=false`` at sizes <= ``--python-loader-steps``, plus
   ``--samples_per_plugin=bn_stats=0`` at ``--all-samples-steps``), waits until
   every point is loaded, and reads the peak and current resident memory of
   the ``tensorboard`` process and its children (the data server) from
   ``/proc/<pid>/status`` (VmHWM, VmRSS): after loading, then after every
   route of the tab was called and the tab was opened in chromium.
3. ``callback``: a real ``fit`` of a 20-BN MLP, ``log_every_n_steps=1``, for
   ``--callback-steps`` steps; the Python heap (tracemalloc) and the RSS at
   checkpoints. The writer keeps the last ``DIAGNOSIS_HISTORY`` steps for the
   end-of-fit diagnosis: memory grows until that is full, then stays flat.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import time
import urllib.parse

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import routes  # noqa: E402  - the route timings, the browser timing and layer_series are shared
from tb_bnstats.format import metadata  # noqa: E402
from tb_bnstats.write import events, summary  # noqa: E402

RUN = "big"  # routes.start_tensorboard / time_routes read a run of this name


# -- memory of a process tree ---------------------------------------------------------

def _status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid):
    """``pid`` and its descendants (the data server is a child of tensorboard)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_memory(pid):
    """``{"rss": MB, "hwm": MB}`` summed over the tree, and per process name."""
    total = {"rss": 0.0, "hwm": 0.0}
    parts = []
    for p in process_tree(pid):
        rss, hwm = _status_kb(p, "VmRSS") / 1024, _status_kb(p, "VmHWM") / 1024
        try:
            name = pathlib.Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            name = "?"
        total["rss"] += rss
        total["hwm"] += hwm
        parts.append(f"{name} {rss:.0f}/{hwm:.0f}")
    return total, ", ".join(parts)


# -- 1. the Writer's throughput ---------------------------------------------------------

def bench_writer(tmp, layers=50, seconds=4.0):
    rng = np.random.default_rng(0)
    c = 64
    infos = [metadata.LayerInfo(name=f"block{i // 4:02d}/conv{i % 4}/bn", channels=c, momentum=0.99, epsilon=1e-3,
                                depth=i, framework="custom") for i in range(layers)]
    moments = [(rng.normal(size=c), rng.uniform(0.5, 2, c), rng.normal(size=c), rng.uniform(0.5, 2, c))
               for _ in range(layers)]
    block = 256  # the callback's ring at most: the steps written at once
    rows = np.full((block, len(metadata.LAYER_SERIES)), 0.5)
    print(f"\n== Writer throughput ({layers} layers, {c} channels, one record per layer per step)")
    print(f"  {'path':56s} {'records/s':>10s} {'MB/s':>7s} {'bytes/record':>13s}")
    for name, per_call, write in (
        ("Writer.layer, one step a call (quantities + events)", 1,
         lambda w, info, step, m: w.layer(info, step, *m, updates=step)),
        (f"Writer.layer_block, {block} steps a call (the callback's)", block,
         lambda w, info, step, m: w.layer_block(info, np.arange(step, step + block),
                                                *(np.broadcast_to(a, (block, c)) for a in m),
                                                updates=np.arange(step, step + block))),
        (f"Writer.layer_series_rows, {block} steps a call (events only)", block,
         lambda w, info, step, m: w.layer_series_rows(info, np.arange(step, step + block), rows)),
    ):
        logdir = tmp / f"writer-{len(name)}"
        w = summary.Writer(logdir, flush_secs=30)
        for info, m in zip(infos, moments):  # the first record of a tag carries its metadata
            w.layer(info, 1, *m, updates=1)
        w.flush()
        start_bytes, started, step = os.path.getsize(w.path), time.perf_counter(), 2
        while time.perf_counter() - started < seconds:
            for info, m in zip(infos, moments):
                write(w, info, step, m)
            step += per_call
        w.close()
        took = time.perf_counter() - started
        records = (step - 2) * layers
        nbytes = os.path.getsize(w.path) - start_bytes
        print(f"  {name:56s} {records / took:10.0f} {nbytes / took / 1e6:7.1f} {nbytes / records:13.0f}")
    # What one per-layer record is made of.
    info = infos[5]
    (record,) = events.ScalarEvents([metadata.layer_tag(info.name, q) for q in metadata.LAYER_SERIES]).serialize(
        [12345], [time.time()], rows[:1])
    total = len(record) + 16  # + TFRecord framing (length, 2 CRCs)
    tags = sum(len(metadata.layer_tag(info.name, q)) + 2 for q in metadata.LAYER_SERIES)
    values = sum(len(events.scalar_tensor(0.25).SerializeToString()) + 2 for _ in metadata.LAYER_SERIES)
    print(f"  one record of layer {info.name!r} ({len(metadata.LAYER_SERIES)} scalars): {total} bytes = "
          f"tags {tags} ({100 * tags / total:.0f}%), scalar tensors {values} ({100 * values / total:.0f}%), "
          f"value framing {2 * len(metadata.LAYER_SERIES)}, step/wall_time/record framing "
          f"{total - tags - values - 2 * len(metadata.LAYER_SERIES)}")


# -- 2. writing a big run -----------------------------------------------------------------

def write_run(run_dir, layers, steps, channels, snapshot_every, period):
    rng = np.random.default_rng(0)
    writer = summary.Writer(run_dir, flush_secs=30)
    infos = [metadata.LayerInfo(name=f"block{i // 4:02d}/conv{i % 4}/bn", channels=channels,
                                momentum=(0.9, 0.99, 0.999)[i % 3], epsilon=1e-3, depth=i, framework="custom")
             for i in range(layers)]
    period = min(period, steps)
    snap_every_row = list(range(0, period, max(1, min(snapshot_every, period) // 4)))
    started = time.time()
    layer_data = []
    for info in infos:
        series, snaps = routes.layer_series(info, np.arange(1, period + 1), rng, snap_every_row)
        table = np.stack([series[q] for q in metadata.LAYER_SERIES], axis=1).astype(np.float32)  # [period, 21]
        layer_data.append((info, table, [snaps[k].astype(np.float32) for k in snap_every_row]))
    print(f"  simulated {period} steps per layer in {time.time() - started:.1f} s", flush=True)
    iu, ic = metadata.LAYER_SERIES.index("updates"), metadata.LAYER_SERIES.index("convergence")
    loss = 2.0 * np.exp(-np.arange(1, steps + 1) / (steps / 4)) + 0.05 * rng.random(steps)
    chunk = 1000
    for first in range(1, steps + 1, chunk):
        step_axis = np.arange(first, min(first + chunk, steps + 1))
        for info, table, snaps in layer_data:
            rows = table[(step_axis - 1) % period].astype(np.float64)
            rows[:, iu], rows[:, ic] = step_axis, 1.0 - info.momentum ** step_axis
            writer.layer_series_rows(info, step_axis, rows)
            for step in step_axis[(step_axis % snapshot_every == 0) | (step_axis == steps)]:
                snap = snaps[(step // snapshot_every) % len(snaps)]
                writer._emit(step, [writer._value(metadata.layer_tag(info.name, metadata.CHANNELS_QUANTITY),
                                                  lambda info=info: metadata.layer_channels_metadata(info),
                                                  tensor=summary._tensor_proto(snap))])
        writer.metrics_block("train", step_axis, {"loss": loss[step_axis - 1]})
        step = int(step_axis[-1])
        if step % 5000 == 0:
            rate = step / (time.time() - started)
            print(f"  step {step}/{steps}, {rate * layers:.0f} layer records/s, ETA {(steps - step) / rate:.0f} s",
                  flush=True)
    writer.close()
    return time.time() - started


def ensure_run(cache, layers, steps, channels, snapshot_every, period):
    logdir = pathlib.Path(cache).expanduser() / f"scale-{layers}x{steps}x{channels}"
    done = logdir / "DONE"
    if done.exists():
        print(f"  using cached event files in {logdir} ({done.read_text().strip()})")
        return logdir
    if logdir.exists():
        shutil.rmtree(logdir)
    print(f"  writing {layers} layers x {steps} steps into {logdir}", flush=True)
    took = write_run(str(logdir / RUN), layers, steps, channels, snapshot_every, period)
    size = dir_size(logdir)
    done.write_text(f"written in {took:.0f} s, {size / 1e9:.2f} GB\n")
    print(f"  written in {took:.0f} s: {size / 1e9:.2f} GB, {size / (layers * steps):.0f} bytes per layer per step, "
          f"{layers * steps / took:.0f} layer records/s, {size / took / 1e6:.0f} MB/s", flush=True)
    return logdir


def dir_size(path):
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


# -- 2b. serving it ---------------------------------------------------------------------------

def all_routes(base, layers):
    """Every route of the tab once (the heat map for every measure)."""
    layer = urllib.parse.quote("block00/conv1/bn", safe="")
    paths = ["/runs", f"/overview?run={RUN}", f"/series?run={RUN}&layer={layer}&points=1200",
             f"/snapshot?run={RUN}&layer={layer}", f"/bands?run={RUN}&layer={layer}", f"/loss?run={RUN}",
             f"/compare?run={RUN}&layer={layer}&quantity=moving_var", f"/findings?run={RUN}",
             f"/series?run={RUN}&layer={layer}&points=1200&format=csv"]
    paths += [f"/heatmap?run={RUN}&measure={urllib.parse.quote(m, safe='')}" for m in metadata.GAP_SERIES]
    for i in range(0, layers, max(1, layers // 20)):
        name = urllib.parse.quote(f"block{i // 4:02d}/conv{i % 4}/bn", safe="")
        paths.append(f"/series?run={RUN}&layer={name}")
    started = time.perf_counter()
    for p in paths:
        routes.get(base + p)
    return len(paths), time.perf_counter() - started


def serve(logdir, flags, layers, steps, browser):
    t0 = time.time()
    proc, port, base = routes.start_tensorboard(str(logdir), flags, layers, steps)
    try:
        load_s = time.time() - t0
        loaded, loaded_parts = tree_memory(proc.pid)
        n, routes_s = all_routes(base, layers)
        if browser:
            routes.time_browser(port, 1)
        after, after_parts = tree_memory(proc.pid)
        stored = json.loads(routes.get(base + f"/series?run={RUN}&layer=block00%2Fconv1%2Fbn"
                                       "&quantities=mean_gap%2Fmax")[1])["series"]["mean_gap/max"]["stored_points"]
        print(f"  loaded: RSS {loaded['rss']:.0f} MB, peak {loaded['hwm']:.0f} MB ({loaded_parts}; MB now/peak)")
        print(f"  after {n} route calls ({routes_s:.1f} s) and the tab in chromium: RSS {after['rss']:.0f} MB, "
              f"peak {after['hwm']:.0f} MB ({after_parts}); {stored} points stored per scalar tag")
        return {"load_s": load_s, "rss": after["rss"], "hwm": max(loaded["hwm"], after["hwm"]), "stored": stored}
    finally:
        proc.terminate()
        proc.wait(60)


# -- 3. the callback's memory -------------------------------------------------------------------

def bench_callback(tmp, steps, layers=20):
    sys.path.insert(0, str(ROOT / "tests"))
    from tb_bnstats import recorder
    from test_memory_bounds import fit_with_checkpoints

    every = max(steps // 10, 1)
    print(f"\n== callback memory: a {layers}-BN MLP, log_every_n_steps=1, {steps} steps, "
          f"DIAGNOSIS_HISTORY={recorder.DIAGNOSIS_HISTORY}; Python heap allocated since step 10 and still held")
    started = time.time()
    points, _ = fit_with_checkpoints(tmp / "callback", steps, 10, range(every, steps + 1, every), layers)
    print(f"  ({time.time() - started:.0f} s under tracemalloc)")
    print(f"  {'step':>6s} {'heap MB':>8s} {'tb_bnstats MB':>14s} {'RSS MB':>8s}")
    for step, heap, own, rss in points:
        print(f"  {step:6d} {heap / 1e6:8.2f} {own / 1e6:14.3f} {rss / 1e6:8.1f}")
    full = [p for p in points if p[0] >= recorder.DIAGNOSIS_HISTORY + 10 + 256]
    if len(full) >= 2:
        (s0, h0, o0, r0), (s1, h1, o1, r1) = full[0], full[-1]
        n = (s1 - s0) * layers
        print(f"  history full: from step {s0} to {s1} ({n:,} layer-steps) tb_bnstats heap {o1 - o0:+,} bytes "
              f"({(o1 - o0) / n:+.3f} per layer-step), whole heap {h1 - h0:+,} bytes, RSS {(r1 - r0) / 1e6:+.1f} MB")
    return points


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--steps", default="5000,20000,50000", help="comma-separated run sizes (logged steps)")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--snapshot-every", type=int, default=100)
    ap.add_argument("--period", type=int, default=1000, help="steps simulated per layer, then cycled")
    ap.add_argument("--cache", default="~/.cache/tb_bnstats_bench")
    ap.add_argument("--keep", action="store_true", help="keep the written runs (they are large)")
    ap.add_argument("--python-loader-steps", type=int, default=5000,
                    help="also --load_fast=false at sizes up to this many steps")
    ap.add_argument("--all-samples-steps", default="", help="sizes also served with --samples_per_plugin=bn_stats=0")
    ap.add_argument("--callback-steps", type=int, default=5000)
    ap.add_argument("--only", default="writer,server,callback")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(","))
    tmp = pathlib.Path(args.cache).expanduser() / "scale-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if "writer" in only:
        bench_writer(tmp)
    table = []
    if "server" in only:
        all_samples = {int(s) for s in args.all_samples_steps.split(",") if s}
        sizes = sorted({int(s) for s in args.steps.split(",") if s} | all_samples)
        for steps in sizes:
            print(f"\n== {args.layers} layers x {steps} steps, {args.channels} channels, snapshot every "
                  f"{args.snapshot_every} steps")
            logdir = ensure_run(args.cache, args.layers, steps, args.channels, args.snapshot_every, args.period)
            size = dir_size(logdir)
            configs = [[]] if steps in {int(s) for s in args.steps.split(",") if s} else []
            if steps <= args.python_loader_steps:
                configs.append(["--load_fast=false"])
            if steps in all_samples:
                configs.append(["--samples_per_plugin=bn_stats=0"])
            for flags in configs:
                print(f"  -- tensorboard {' '.join(flags) or '(default flags)'}", flush=True)
                r = serve(logdir, flags, args.layers, steps, browser=not args.no_browser and not flags)
                table.append((args.layers, steps, size, " ".join(flags) or "default", r))
            if not args.keep:
                shutil.rmtree(logdir)
        print("\n| layers | steps | event files | flags | load time | points kept per tag | server RSS after routes "
              "| server peak RSS |")
        print("|---|---|---|---|---|---|---|---|")
        for layers, steps, size, flags, r in table:
            print(f"| {layers} | {steps:,} | {size / 1e9:.2f} GB | {flags} | {r['load_s']:.0f} s | {r['stored']:,} "
                  f"| {r['rss']:.0f} MB | {r['hwm']:.0f} MB |")
    if "callback" in only:
        bench_callback(tmp, args.callback_steps)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
