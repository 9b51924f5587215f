"""The tests of TensorFlow 1-style code and tf_keras (Keras 2), in a pytest
process of their own: ``TF_USE_LEGACY_KERAS=1`` must be set before
TensorFlow is imported (``tf.keras`` is then tf_keras). Graph-mode tests
build their graphs in ``tf.Graph().as_default()`` blocks, so eager tf_keras
tests run in the same process."""

import os
import sys

import pytest

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise pytest.UsageError("tests/legacy need TF_USE_LEGACY_KERAS=1 before TensorFlow is imported: run them in "
                            "a pytest process of their own (make test-python does)")
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ (scenarios_common)
