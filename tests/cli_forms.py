"""``tb-bnstats diagnose`` from the outside, as a user runs it: the console
script in a subprocess, with every way of naming a run's directory. Shared by
the Keras checks (tests/test_cli.py) and the PyTorch ones
(tests/pytorch/test_torch_cli.py), which train the runs."""

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

EXE = pathlib.Path(sys.executable).with_name("tb-bnstats")
# What the end-of-training hint looks like: "... finding(s) for RUN (tb-bnstats diagnose PATH):"
HINT = re.compile(r"^tb_bnstats: \d+ finding\(s\) for (\S+) \((tb-bnstats diagnose .+)\):$", re.MULTILINE)
# Every line the CLI prints in text mode.
OWN_LINE = re.compile(r"^(\S.*: (\d+ finding\(s\)|no BatchNormalization problem found)"
                      r"|  (ERROR|WARNING|INFO) +BN\d{3} \[S\d+\] layers: .*"
                      r"|          \S.*)$")


def train_in(base, run_scenario, names):
    """Trains each scenario of ``names`` with ``run_scenario(name, "logs",
    verbose=1)`` from ``base``, as a user in their project directory (a
    relative ``log_dir``); returns ``{name: what training printed}``."""
    printed = {}
    cwd = os.getcwd()
    os.chdir(base)
    try:
        for name in names:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                run_scenario(name, "logs", verbose=1)
            printed[name] = out.getvalue()
    finally:
        os.chdir(cwd)
    return printed


def env():
    """The environment of a user whose virtualenv is active: its ``bin`` first on PATH."""
    return dict(os.environ, PATH=f"{EXE.parent}{os.pathsep}{os.environ.get('PATH', '')}")


def diagnose(*args, cwd):
    """``tb-bnstats diagnose ARGS`` run in ``cwd``."""
    return subprocess.run([str(EXE), "diagnose", *args], cwd=cwd, capture_output=True, text=True, env=env(),
                          timeout=300)


def run_printed(command, cwd):
    """A command exactly as the product printed it, through a shell."""
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, env=env(), timeout=300)


def printed_hint(stdout):
    """``(run, command)`` of the end-of-training hint in ``stdout``."""
    match = HINT.search(stdout)
    assert match, f"no hint printed:\n{stdout}"
    return match.group(1), match.group(2)


def check_printed_hint(base, printed, bad, healthy):
    """The end-of-training line of run ``bad`` names it and a command; run
    exactly as printed from ``base`` (where training ran), the command prints
    that run's BN001 on bn1 and bn2 and exits 1; ``healthy`` printed that it
    has no problem."""
    run, command = printed_hint(printed[bad])
    assert (run, command) == (bad, f"tb-bnstats diagnose logs/{bad}")
    result = run_printed(command, cwd=base)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(f"{bad}: 1 finding(s)\n  ERROR   BN001 [S1] layers: bn1, bn2\n")
    assert f"{healthy}: no BatchNormalization problem found" in printed[healthy]


def check_tab_names_the_run(base, run):
    """``tensorboard --logdir logs/RUN`` (the run's own directory, which
    TensorBoard calls "."): the tab lists the run under its name, and its
    /findings name it so, with the CLI's findings."""
    from test_e2e_tab import get_json, tensorboard

    cli = json.loads(diagnose(f"logs/{run}", "--json", cwd=base).stdout)
    with tensorboard(str(pathlib.Path(base, "logs", run)), min_runs=1) as url:
        assert [r["run"] for r in get_json(url + "/data/plugin/bn_stats/runs")["runs"]] == [run]
        findings = get_json(url + f"/data/plugin/bn_stats/findings?run={run}")
    assert findings["run"] == run
    assert [{k: v for k, v in f.items() if k != "source"} for f in findings["findings"]] == cli


def assert_only_own_lines(stdout):
    assert stdout.strip(), "nothing printed"
    strays = [line for line in stdout.splitlines() if not OWN_LINE.match(line)]
    assert not strays, f"lines that are not the CLI's own: {strays}"


def own_directory_forms(base, run):
    """The ways to name the run ``base/logs/run``, each ``(label, args)``,
    run from ``base``: they all name the run ``run`` and print the same."""
    return [
        ("relative", [f"logs/{run}"]),
        ("relative with ./", [f"./logs/{run}"]),
        ("trailing slash", [f"logs/{run}/"]),
        ("absolute", [str(pathlib.Path(base, "logs", run))]),
        ("parent --run", ["logs", "--run", run]),
        ("absolute parent --run, trailing slash", [str(pathlib.Path(base, "logs")) + "/", "--run", run]),
        ("own directory --run .", [f"logs/{run}", "--run", "."]),
    ]


def check_path_forms(base, run, codes, exit_code):
    """Every form of :func:`own_directory_forms`, and a nested tree, say the
    same about ``base/logs/run``: the same stdout (text and JSON) under the
    name ``run``, findings with exactly ``codes``, exit ``exit_code``. The
    parent without ``--run`` prints the same block among the other runs'.
    Returns the reference JSON findings."""
    reference = diagnose(f"logs/{run}", cwd=base)
    reference_json = diagnose(f"logs/{run}", "--json", cwd=base)
    assert reference.returncode == exit_code, reference.stderr
    assert_only_own_lines(reference.stdout)
    assert reference.stdout.splitlines()[0].startswith(f"{run}: ")
    findings = json.loads(reference_json.stdout)
    assert {f["code"] for f in findings} == set(codes)
    assert {f["run"] for f in findings} <= {run}
    if not codes:
        assert reference.stdout == f"{run}: no BatchNormalization problem found\n"
    for label, args in own_directory_forms(base, run):
        text, as_json = diagnose(*args, cwd=base), diagnose(*args, "--json", cwd=base)
        assert (text.returncode, as_json.returncode) == (exit_code, exit_code), (label, text.stderr)
        assert text.stdout == reference.stdout, label
        assert json.loads(as_json.stdout) == findings, label

    parent = diagnose("logs", cwd=base)
    block = reference.stdout
    assert block in parent.stdout
    assert_only_own_lines(parent.stdout)

    # A nested tree: the run two levels down is named by its path from the directory given.
    tree = f"tree-{run}"
    nested = pathlib.Path(base, tree, "group", run)
    if not nested.exists():
        shutil.copytree(pathlib.Path(base, "logs", run), nested)
    for args, name in (([tree], f"group/{run}"), ([f"{tree}/group"], run), ([f"{tree}/group/{run}"], run)):
        as_json = diagnose(*args, "--json", cwd=base)
        assert as_json.returncode == exit_code, (args, as_json.stderr)
        assert json.loads(as_json.stdout) == [dict(f, run=name) for f in findings], args
    return findings
