"""``tb-bnstats diagnose`` on real PyTorch runs, as a user runs it: the
command the monitor prints when it closes, run exactly as printed; every way
of naming the run's directory giving the same findings under the same name
and exit code (tests/cli_forms.py); and the tab naming the run the same way
under a real ``tensorboard`` pointed at the run's own directory."""


import pytest

import cli_forms
import torch_scenarios as scenarios

BAD, HEALTHY = "s1_momentum_0.01", "healthy_dense_s0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A BN001 run and a healthy one, logged with the monitor's relative
    ``log_dir`` from ``base``; ``(base, {run: what training printed})``."""
    base = tmp_path_factory.mktemp("torch_cli")
    return base, cli_forms.train_in(base, scenarios.run_scenario, (BAD, HEALTHY))


def test_the_printed_hint_runs_as_printed(runs):
    """The line the monitor prints at close names the run and a command;
    run exactly as printed from where training ran, it prints that run's
    BN001 and exits 1."""
    cli_forms.check_printed_hint(*runs, BAD, HEALTHY)


def test_every_path_form_says_the_same(runs):
    """Own directory (relative, ./, trailing slash, absolute), parent with
    --run, --run ".", nested tree: same findings and name; exit 1 for BN001,
    exit 0 and "no problem" for the healthy run."""
    base, _ = runs
    findings = cli_forms.check_path_forms(base, BAD, {"BN001"}, exit_code=1)
    assert findings[0]["layers"] == ["bn1", "bn2"]
    cli_forms.check_path_forms(base, HEALTHY, set(), exit_code=0)


def test_tab_names_the_run_the_same_under_a_real_tensorboard(runs):
    """``tensorboard --logdir logs/RUN``: the tab lists the run by its name
    and its /findings are the CLI's, under that name."""
    cli_forms.check_tab_names_the_run(runs[0], BAD)
