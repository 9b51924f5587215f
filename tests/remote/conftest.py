"""A real S3-compatible HTTP server for the remote-directory tests: moto's
standalone server (``moto[server]``), started once per session in a process
of its own on a port it picks itself (``-p 0``, read from the line it
prints), with a fresh bucket per test and the environment a user of S3 sets
(``AWS_ENDPOINT_URL``, credentials, region)."""

import itertools
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading

import pytest

# The PyTorch tests' models and input recorder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "pytorch"))

_RUNNING = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")
_BUCKETS = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of a moto server running in its own process."""
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen = []
    try:
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                raise AssertionError(f"moto's server printed no address in 60 s: {''.join(seen)}") from None
            seen.append(line)
            found = _RUNNING.search(line)
            if found:
                break
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """The variables a user of an S3-compatible server sets, set in this
    process (and returned, for subprocesses)."""
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ, **env)


@pytest.fixture
def bucket(s3_env):
    """A new, empty bucket on the server: its name."""
    import boto3

    name = f"bucket-{os.getpid()}-{next(_BUCKETS)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name

