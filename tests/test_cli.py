"""``tb-bnstats diagnose`` as a user runs it, on real Keras runs: the command
the callback prints at the end of ``fit`` run exactly as printed, every way of
naming the run's directory giving the same findings under the same name and
exit code, stdout holding only the CLI's own lines without TensorFlow
imported, clear exit-2 messages on bad input, and the tab naming the run the
same way under a real ``tensorboard``, whose sampling hint works as printed.
The PyTorch side is tests/pytorch/test_torch_cli.py."""

import json
import pathlib
import subprocess
import sys

import pytest

import cli_forms
import diagnosis_scenarios as scenarios

BAD, HEALTHY = "s1_momentum_0.99", "healthy_dense_s0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A BN001 run and a healthy one, trained with the callback's relative
    ``log_dir`` from ``base`` (as a user in their project directory);
    ``(base, {run: what its fit printed})``."""
    base = tmp_path_factory.mktemp("cli")
    return base, cli_forms.train_in(base, scenarios.run_scenario, (BAD, HEALTHY))


def test_the_printed_hint_runs_as_printed(runs):
    """The end-of-fit line names the run and a command; that command, run
    exactly as printed from where training ran, prints the same run's
    findings and exits 1 (an error)."""
    cli_forms.check_printed_hint(*runs, BAD, HEALTHY)


def test_every_path_form_says_the_same(runs):
    """A run's own directory (relative, ./, trailing slash, absolute), its
    parent with --run, --run ".", and a nested tree: same findings, same
    name, exit 1 for the BN001 run; exit 0 and "no problem" for the healthy
    one."""
    base, _ = runs
    findings = cli_forms.check_path_forms(base, BAD, {"BN001"}, exit_code=1)
    assert findings[0]["layers"] == ["bn1", "bn2"]
    cli_forms.check_path_forms(base, HEALTHY, set(), exit_code=0)


def test_stdout_is_only_the_clis_own_and_tensorflow_is_not_imported(runs):
    """The CLI in a fresh process reads the run without importing
    TensorFlow or Keras, and prints nothing of theirs: text mode only its own
    lines, --json one JSON document."""
    base, _ = runs
    code = ("import sys; from tb_bnstats import cli; sys.argv[0] = 'tb-bnstats'; rc = cli.console_main(); "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules); "
            "sys.exit(rc)")
    for extra in ([], ["--json"]):
        result = subprocess.run([sys.executable, "-c", code, "diagnose", "logs", *extra], cwd=base,
                                capture_output=True, text=True, timeout=120, env=cli_forms.env())
        assert result.returncode == 1, result.stderr
        if extra:
            assert {f["run"] for f in json.loads(result.stdout)} == {BAD}
        else:
            cli_forms.assert_only_own_lines(result.stdout)
        assert "oneDNN" not in result.stdout + result.stderr


def test_bad_input_exits_2_with_a_reason(runs, tmp_path):
    """A file, a missing path, an empty directory, event files without
    bn_stats data and a --run naming nothing: exit 2, a one-line reason on
    stderr, nothing on stdout."""
    import tensorflow as tf

    base, _ = runs
    plain = tmp_path / "plain"
    with tf.summary.create_file_writer(str(plain)).as_default():
        tf.summary.scalar("loss", 1.0, step=0)
    (tmp_path / "empty").mkdir()
    event_file = next(pathlib.Path(base, "logs", BAD).glob("*tfevents*"))
    cases = [
        ([str(event_file)], "is a file"),
        ([str(tmp_path / "missing")], "no such directory"),
        ([str(tmp_path / "empty")], "no event files under"),
        ([str(plain)], "no bn_stats data under"),
        (["logs", "--run", "nope"], "no bn_stats data for run 'nope'"),
    ]
    for args, reason in cases:
        result = cli_forms.diagnose(*args, cwd=base)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert reason in result.stderr and result.stderr.startswith("tb-bnstats: "), result.stderr


def test_tab_names_the_run_the_same_under_a_real_tensorboard(runs):
    """``tensorboard --logdir logs/RUN`` (the run's own directory, which
    TensorBoard calls "."): the tab lists the run under its name, and its
    /findings name it so, with the CLI's findings."""
    cli_forms.check_tab_names_the_run(runs[0], BAD)


def test_the_tabs_sampling_hint_works_as_printed(tmp_path):
    """With --load_fast=false TensorBoard keeps 10 records per tensor tag and
    the tab says so of a log with more, with a flag to add; restarted with
    that flag, exactly as printed, every logged point is served and the tab
    no longer reports sampling."""
    from conftest import write_many_records
    from test_e2e_tab import get_json, tensorboard

    write_many_records(str(tmp_path), steps=1000)
    series = "/data/plugin/bn_stats/series?run=long&layer=bn&quantities=mean_gap/max"
    with tensorboard(str(tmp_path), "--load_fast=false", min_runs=1) as url:
        sampling = get_json(url + series)["sampling"]
    assert sampling["sampled"], sampling
    hint = sampling["hint"]
    assert f"Restart TensorBoard with {hint}" in sampling["message"]
    with tensorboard(str(tmp_path), "--load_fast=false", *hint.split(), min_runs=1) as url:
        body = get_json(url + series)
    assert not body["sampling"]["sampled"]
    assert body["series"]["mean_gap/max"]["stored_points"] == 1000  # every step, one by one
