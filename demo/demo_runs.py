"""What the demo scripts share: train each run not written yet, one at a
time, and print the summary (a demo run is trained once; delete its
directory to train it again)."""

import pathlib


def train_missing(logdir, names, train_one, title="Demo runs"):
    """``train_one(name, run_dir)`` for each of ``names`` without event files
    under ``logdir`` yet; prints each run's summary line it returns."""
    summary = []
    for name in names:
        run_dir = pathlib.Path(logdir) / name
        if run_dir.exists() and any(run_dir.glob("events.out.tfevents.*")):
            print(f"{name}: already written, skipping (delete {run_dir} to train it again)")
            continue
        print(f"{name}: training", flush=True)
        summary.append(train_one(name, run_dir))
    if summary:
        print("\n".join(["", f"{title} (tb-bnstats diagnose {logdir} lists the findings):", *summary]))
