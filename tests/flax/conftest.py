"""The Flax lane: one pytest process of its own (``make test-flax``), with two
host devices forced before JAX is imported (the multi-device tests shard over
them; the others run on the default device)."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
