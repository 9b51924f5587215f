"""Wall time of ``tb-bnstats diagnose RUN_DIR`` in a fresh process, against
the same diagnosis in a process that imports TensorFlow first (how the CLI
read event files before it stopped importing it), alternated in one run.

    python bench/cli.py RUN_DIR [--rounds 5]

Prints the median of each and their ratio. RUN_DIR: any run, e.g. one of
``make demo``'s (``demo/logs/momentum_0.99``).
"""

import argparse
import statistics
import subprocess
import sys
import time

WITH_TENSORFLOW = "import tensorflow, sys; from tb_bnstats import cli; sys.exit(cli.main(sys.argv[1:]))"
WITHOUT = "import sys; from tb_bnstats import cli; sys.exit(cli.main(sys.argv[1:]))"


def timed(code, run_dir):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "diagnose", run_dir], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"diagnose failed ({done.returncode}): {done.stderr}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times = {"cli": [], "with TensorFlow imported": []}
    for _ in range(args.rounds):
        times["cli"].append(timed(WITHOUT, args.run_dir))
        times["with TensorFlow imported"].append(timed(WITH_TENSORFLOW, args.run_dir))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:26s} median {median:6.2f} s over {args.rounds} rounds")
    print(f"ratio cli / with TensorFlow: {medians['cli'] / medians['with TensorFlow imported']:.2f}")


if __name__ == "__main__":
    main()
