"""The scenario suites over several seeds: per finding code, how often the
diagnosis finds what a scenario expects (recall) and how often what it finds
was expected (precision), in each framework. The table of
docs/scenarios.md ("Calibrated on both frameworks").

    python bench/scenario_seeds.py LOGDIR --framework pytorch [--seeds 5]
    python bench/scenario_seeds.py LOGDIR --framework keras [--seeds 5]

Each scenario of the suite (tests/pytorch/torch_scenarios.py,
tests/diagnosis_scenarios.py) that takes a seed is run with seeds 0..N-1 (the
model's initialization and the data order), logged into
``LOGDIR/<framework>/<scenario>_seed<k>``, diagnosed from its logs by
:func:`tb_bnstats.diagnose`, and compared with the suite's ``EXPECTED``
findings, ``(code, severity)`` per run (the layers named are not compared).
Prints a markdown table per code: runs where expected, found, true and false
positives (on healthy runs and on the others), precision and recall; then
the runs that differ from what was expected.
"""

import argparse
import collections
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The scenarios run over seeds (the others are deterministic mechanisms with a fixed setup).
PYTORCH = ("healthy_dense_s0", "healthy_conv_s0", "healthy_gap_s0", "s1_momentum_0.01", "s2_bn_in_eval",
           "s2_bn_frozen", "s3_buffers_not_restored", "s4_momentum_0.9", "s5_dropout_before_bn", "s6_batch_4",
           "s7_sorted")
KERAS = ("healthy_dense_s0", "healthy_conv_s0", "s1_momentum_0.99", "s2_inference_mode", "s2_frozen",
         "s4_momentum_0.1", "s5_dropout_before_bn", "s6_batch_4", "s7_sorted")


def suite(framework):
    """The scenario module and the scenarios run over seeds."""
    sys.path.insert(0, str(ROOT / "tests"))
    if framework == "pytorch":
        sys.path.insert(0, str(ROOT / "tests" / "pytorch"))
        import torch

        import torch_scenarios

        torch.set_num_threads(1)
        return torch_scenarios, PYTORCH
    import diagnosis_scenarios

    return diagnosis_scenarios, KERAS


def run_all(framework, logdir, seeds):
    """Runs every (scenario, seed); returns ``{run: (scenario, expected set, found set)}``."""
    import tb_bnstats

    module, names = suite(framework)
    from scenarios_common import live_findings  # tests/, on the path now
    out = {}
    for name in names:
        for seed in range(seeds):
            run = f"{name}_seed{seed}"
            t = time.time()
            model, _ = module.run_scenario(name, logdir, seed=seed, run=run)
            found = {(f.code, f.severity) for f in tb_bnstats.diagnose(logdir, run=run)}
            found |= {(f.code, f.severity) for f in live_findings(name, model)}
            expected = set(module.EXPECTED[name])
            if name == "s5_dropout_before_bn":
                expected.add(("BN004", "warning"))  # found on the model (live_findings), in both suites
            out[run] = (name, expected, found)
            print(f"{run}: {sorted(found)} ({time.time() - t:.1f}s)", file=sys.stderr, flush=True)
    return out


def table(results):
    """Markdown: per code, expected / found / TP / FP (healthy, other) / precision / recall."""
    counts = collections.defaultdict(collections.Counter)
    for name, expected, found in results.values():
        exp_codes, found_codes = {c for c, _ in expected}, {c for c, _ in found}
        for code in exp_codes | found_codes:
            c = counts[code]
            c["expected"] += code in exp_codes
            c["found"] += code in found_codes
            c["tp"] += code in exp_codes and code in found_codes
            if code in found_codes and code not in exp_codes:
                c["fp_healthy" if name.startswith("healthy") else "fp_other"] += 1
    rows = ["| code | runs expecting it | runs finding it | found where expected | false: healthy runs | "
            "false: other runs | precision | recall |", "|---|---|---|---|---|---|---|---|"]
    for code in sorted(counts):
        c = counts[code]
        precision = c["tp"] / c["found"] if c["found"] else float("nan")
        recall = c["tp"] / c["expected"] if c["expected"] else float("nan")
        rows.append(f"| {code} | {c['expected']} | {c['found']} | {c['tp']} | {c['fp_healthy']} | {c['fp_other']} | "
                    f"{precision:.2f} | {recall:.2f} |")
    misses = [f"- `{run}`: expected {sorted(c for c, _ in e) or 'nothing'}, "
              f"found {sorted(c for c, _ in f) or 'nothing'}"
              for run, (_, e, f) in sorted(results.items()) if {c for c, _ in e} != {c for c, _ in f}]
    return "\n".join(rows + ["", f"{len(results)} runs; differing from the expected codes: {len(misses)}"] + misses)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--framework", choices=("pytorch", "keras"), required=True)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logdir = os.path.join(args.logdir, args.framework)
    t = time.time()
    results = run_all(args.framework, logdir, args.seeds)
    print(f"## {args.framework}, seeds 0-{args.seeds - 1} ({time.time() - t:.0f} s)\n")
    print(table(results))


if __name__ == "__main__":
    main()
