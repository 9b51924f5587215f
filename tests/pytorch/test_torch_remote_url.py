"""A PyTorch process where TensorFlow is installed (this venv) writes to and
reads from a URL (fsspec's ``memory://``, in the process) without importing
TensorFlow, Keras or JAX: the writer goes through fsspec, TensorBoard's
reader through its own TensorFlow-free file systems. The S3 server tests are
in tests/remote."""

import json
import os
import subprocess
import sys
import textwrap


def test_a_url_is_written_and_read_without_importing_tensorflow():
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        import torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from torch_models import SmallResNet, data, train
        import tb_bnstats
        from tb_bnstats import cli
        from tb_bnstats.torch import BNStatsMonitor
        torch.manual_seed(0)
        model = SmallResNet()
        x, y = data(n=64)
        with BNStatsMonitor(model, "memory://logs/run", verbose=0) as monitor:
            losses = train(model, x, y, batch=16, epochs=2, monitor=monitor)
        run = tb_bnstats.load("memory://logs")["run"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["diagnose", "memory://logs/run", "--json"], without_tensorflow=True)
        imported = sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)
        steps, values = run.metrics["train/loss"]
        print("RESULT", json.dumps({{"steps": [int(s) for s in steps], "losses": [float(v) for v in values],
                                    "expected": losses, "code": code, "findings": json.loads(out.getvalue()),
                                    "imported": imported}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["imported"] == []
    assert result["steps"] == list(range(1, 9))
    assert max(abs(a - b) / abs(b) for a, b in zip(result["losses"], result["expected"])) < 1e-6
    assert result["code"] == 1 and [f["code"] for f in result["findings"]] == ["BN001"]
