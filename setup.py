"""tb_bnstats: a Keras callback, a PyTorch monitor and a TensorBoard plugin for BatchNormalization statistics."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

setup(
    name="tb_bnstats",
    version="0.1.0",
    description="See how BatchNormalization batch moments and moving averages behave, in TensorBoard",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tb_bnstats", "tb_bnstats.*"]),
    package_data={"tb_bnstats.plugin": ["static/*"]},
    python_requires=">=3.10",
    # What every use needs: the plugin, the event writer and reader. The frameworks are extras, so that a
    # PyTorch user does not install TensorFlow.
    install_requires=[
        # 2.20 and older fail to import with setuptools 82+ (no pkg_resources).
        "tensorboard>=2.21,<3",
        "werkzeug>=2.2",
        # CRC32C in C for the event files' record framing (TensorBoard's is pure Python).
        "google-crc32c>=1.5,<2",
        "numpy>=1.26",
    ],
    extras_require={
        # Keras 3: "<3.16", the releases tested (Keras 3.15). The callback relies on private Keras API, which
        # tb_bnstats/frameworks/keras/internals.py lists and checks on the installed release (its TESTED_KERAS
        # is this range): on a newer Keras whose internals changed, it warns once and turns monitoring off.
        # Keras 3 on TensorFlow (the default backend).
        "tensorflow": ["keras>=3.10,<3.16", "tensorflow>=2.21,<3; platform_machine!='x86_64'",
                       "tensorflow-cpu>=2.21,<3; platform_machine=='x86_64'"],
        # Keras 3 on JAX (KERAS_BACKEND=jax).
        "jax": ["keras>=3.10,<3.16", "jax>=0.4.30,<1"],
        # Flax NNX and Linen (tb_bnstats.flax); tested with flax 0.12.8 on jax 0.10.2 (CPU).
        "flax": ["flax>=0.11,<0.13", "jax>=0.4.30,<1"],
        # PyTorch (tb_bnstats.torch), and Keras on torch with [keras,torch]. Pick the torch build for your
        # machine (README, Install): a bare "torch" on Linux is a CUDA build of several GB.
        "torch": ["torch>=2.4,<3"],
        "keras": ["keras>=3.10,<3.16"],
        # The training loops over PyTorch (tb_bnstats.lightning, tb_bnstats.transformers); torch as above.
        # Tested with lightning 2.6 and transformers 5.25 (its Trainer needs accelerate).
        "lightning": ["lightning>=2.4,<3"],
        "transformers": ["transformers>=5,<6", "accelerate>=1.1"],
        # Remote log directories without TensorFlow, through fsspec: s3:// and gs:// (docs/remote.md). Tested
        # with fsspec and s3fs 2026.9 (calendar versions; the calls used are older than the lower bound).
        "s3": ["fsspec>=2024.6,<2027", "s3fs>=2024.6,<2027"],
        "gcs": ["fsspec>=2024.6,<2027", "gcsfs>=2024.6,<2027"],
        # ruff and mypy pinned to a minor version: a newer one adds rules and checks, and make lint would fail
        # on code that did not change.
        "test": ["pytest>=8", "playwright>=1.45", "hypothesis>=6.100", "scikit-learn>=1.4", "ruff>=0.17.6,<0.18",
                 "mypy>=2.4,<2.5"],
        "demo": ["scikit-learn>=1.4"],
        # The documentation site (mkdocs.yml, docs/): mkdocs build --strict. mkdocstrings 0.30 fails with
        # pymdown-extensions 13 (Highlight() without md); 1.0 works with it. Tested: mkdocs 1.6.1,
        # mkdocs-material 9.8.2, mkdocstrings 1.0.8, mkdocstrings-python 2.0.9.
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=1.0,<2",
                 "mkdocstrings-python>=2.0,<3"],
    },
    entry_points={
        "tensorboard_plugins": ["bn_stats = tb_bnstats.plugin.loader:BNStatsLoader"],
        "console_scripts": ["tb-bnstats = tb_bnstats.cli:console_main"],
    },
    classifiers=["Programming Language :: Python :: 3", "Framework :: TensorFlow"],
)
