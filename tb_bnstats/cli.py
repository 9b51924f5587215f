"""``tb-bnstats``: the command line.

    tb-bnstats diagnose LOGDIR [--run RUN] [--json] [--fail-on error|warning|never]

prints the findings of :func:`tb_bnstats.diagnose` and exits 1 when one is at
or above ``--fail-on`` (default: error), so that it can gate CI; 0 otherwise,
2 on a usage error or an unreadable log directory.
"""

import argparse
import os
import sys


def _diagnose(args):
    from tb_bnstats import diagnosis
    from tb_bnstats.read import reader

    if not os.path.isdir(args.logdir):
        print(f"tb-bnstats: no such directory: {args.logdir}", file=sys.stderr)
        return 2
    try:
        runs = reader.load(args.logdir, run=args.run)
    except KeyError as exc:
        print(f"tb-bnstats: {exc.args[0]}", file=sys.stderr)
        return 2
    findings = diagnosis.diagnose(runs)
    if args.json:
        print(diagnosis.to_json(findings))
    else:
        if not runs:
            print(f"no bn_stats data under {args.logdir}")
        for name in sorted(runs):
            mine = [f for f in findings if f.run == name]
            print(f"{name}: {len(mine)} finding(s)" if mine else f"{name}: no BatchNormalization problem found")
            for f in mine:
                print(f"  {f.severity.upper():7s} {f.code} [{f.scenario}] layers: {', '.join(f.layers)}")
                print(f"          {f.message}")
    levels = {"error": ("error",), "warning": ("error", "warning"), "never": ()}[args.fail_on]
    return 1 if any(f.severity in levels for f in findings) else 0


def main(argv=None):
    """Runs ``tb-bnstats`` with ``argv`` (default: the process's); returns the exit code."""
    parser = argparse.ArgumentParser(prog="tb-bnstats", description="BatchNormalization statistics tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("diagnose", help="print what is wrong with the BN statistics of logged runs")
    p.add_argument("logdir", help="a TensorBoard log directory written by tb_bnstats")
    p.add_argument("--run", help="only this run (as TensorBoard names it)")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.add_argument("--fail-on", choices=("error", "warning", "never"), default="error",
                   help="exit 1 when a finding of this severity or worse exists (default: error)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "diagnose":
        return _diagnose(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
