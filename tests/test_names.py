"""The one rule for a run's name (tb_bnstats.format.names), on its own: a
directory's own name from every path form, nested runs by their relative
path, the log directory itself by its name unless another run has it, and
the printed command quoted for a shell."""

import os
import shlex

from tb_bnstats.format import names


def test_own_name_of_every_path_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs" / "run1").mkdir(parents=True)
    forms = ["logs/run1", "logs/run1/", "./logs/run1", str(tmp_path / "logs" / "run1"),
             str(tmp_path / "logs" / "run1") + os.sep, "logs/../logs/run1"]
    assert {names.own_name(f) for f in forms} == {"run1"}
    assert names.own_name("s3://bucket/runs/run1/") == "run1"
    assert names.own_name("s3://bucket") == "bucket"
    assert names.own_name("/") == names.LOGDIR_ITSELF


def test_runs_are_named_by_their_path_from_the_directory_given():
    assert names.run_names([".", "a", "a/b"], "/x/logs") == {".": "logs", "a": "a", "a/b": "a/b"}
    # The log directory itself keeps "." when another run already has its name.
    assert names.run_names([".", "logs"], "/x/logs") == {".": ".", "logs": "logs"}


def test_the_printed_command_survives_a_shell():
    command = names.diagnose_command("logs/my run's dir")
    assert shlex.split(command) == ["tb-bnstats", "diagnose", "logs/my run's dir"]
    assert names.diagnose_command("logs/run1") == "tb-bnstats diagnose logs/run1"
