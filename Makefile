# The two commands of the README:
#   make demo   -- install, train the demo runs, start TensorBoard with the BN Convergence tab
#   make test   -- install everything the tests need, then run them all
# Everything goes into a virtual environment in .venv (override with VENV=...).

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: test-budget test-traps install install-vision install-test test-flax system-deps frontend-check lint test test-python test-remote test-vision test-frontend bench bench-lightning demo demo-logs bundle

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)
	$(PIP) install --quiet -e ".[tensorflow]"

system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The tests run under Keras' three backends and PyTorch, as CPU builds. A bare "torch" would pull a
# CUDA build of several GB; 2.13.0 is the CPU build this setup installs (see README, Install).
TORCH := "torch==2.13.0"

# tf_keras (Keras 2) for the TensorFlow 1-style tests: its wheel requires the "tensorflow" distribution,
# which would install the full TensorFlow beside tensorflow-cpu; with --no-deps it runs on tensorflow-cpu.
# It is made for one TensorFlow minor version: TensorFlow is held to that one where tf_keras is installed.
TF_KERAS := "tf-keras>=2.21,<2.22"
TF_FOR_TF_KERAS := "tensorflow-cpu>=2.21,<2.22; platform_machine=='x86_64'" \
	"tensorflow>=2.21,<2.22; platform_machine!='x86_64'"

install-test: $(PY) system-deps
	$(PIP) install --quiet -e ".[test,tensorflow,jax,flax,docs]" $(TORCH) $(TF_FOR_TF_KERAS)
	$(PIP) install --quiet --no-deps $(TF_KERAS)
	cd frontend && npm ci --no-audit --no-fund --loglevel=error

# The PyTorch ecosystem lane (Lightning, the Hugging Face Trainer, timm, torchvision, remote directories on
# a local S3 server) in a venv of its own without TensorFlow: torchvision needs torch 2.14.1, which pip takes
# from this machine's disk (PyPI's torchvision does not import beside the 2.13.0 CPU build).
VISION_VENV ?= .venv-vision
VISION_PY := $(VISION_VENV)/bin/python
VISION_TORCH := "torch==2.14.1" "torchvision==0.29.1"

$(VISION_PY):
	python3 -m venv $(VISION_VENV)
	$(VISION_PY) -m pip install --quiet --upgrade pip

install-vision: $(VISION_PY)
	$(VISION_PY) -m pip install --quiet $(VISION_TORCH)
	$(VISION_PY) -m pip install --quiet -e ".[lightning,transformers,s3]" $(VISION_TORCH) timm "moto[server]>=5,<6" \
	  "pytest>=8" "playwright>=1.45"

# The training loops over PyTorch (tb_bnstats.lightning, tb_bnstats.transformers; timm and torchvision
# models) in their own pytest process, in the venv above.
test-vision: install-vision
	$(VISION_PY) -m pytest -q tests/vision

# Rebuilds the committed bundle and fails if it differs from what is committed.
frontend-check: install-test
	cd frontend && npm run --silent build
	git diff --exit-code --stat -- tb_bnstats/plugin/static || { echo "tb_bnstats/plugin/static is stale: run 'make bundle' and commit it"; exit 1; }

test-frontend: install-test
	cd frontend && npm test --silent

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) over the repository and mypy over the typed
# modules, both configured in pyproject.toml.
lint: install-test
	$(PY) -m ruff check .
	$(PY) -m mypy

# Everything under TensorFlow, then the tests of what depends on the backend once more in a pytest
# process of its own per backend (Keras picks its backend once per process), PyTorch's own, and
# TensorFlow 1-style code and tf_keras (TF_USE_LEGACY_KERAS=1 must be set before TensorFlow is imported).
# After the TensorFlow suite they run in two lanes at once, one per core (none of them serves TensorBoard
# or drives a browser): Keras on JAX; Keras on torch, then PyTorch, then tests/legacy. Each lane's output
# is printed when both are done, and the target fails when any suite failed (an interrupt stops both).
# The tests run again per backend are those marked `backend` (pytestmark = pytest.mark.backend in their file).
LANES := test-artifacts/lanes
BACKEND_TESTS := -m backend tests --ignore=tests/pytorch --ignore=tests/legacy --ignore=tests/remote --ignore=tests/vision \
  --ignore=tests/flax --ignore=tests/budget

test-python: install-test
	$(PY) -m pytest -q tests --ignore=tests/pytorch --ignore=tests/legacy --ignore=tests/remote --ignore=tests/vision \
	  --ignore=tests/flax --ignore=tests/budget
	@rm -rf $(LANES); mkdir -p $(LANES); \
	( KERAS_BACKEND=jax $(PY) -m pytest -q --basetemp=$(LANES)/tmp-jax $(BACKEND_TESTS) \
	  || echo "KERAS_BACKEND=jax" >> $(LANES)/failed ) > $(LANES)/1-jax.log 2>&1 & \
	jax=$$!; \
	( KERAS_BACKEND=torch $(PY) -m pytest -q --basetemp=$(LANES)/tmp-torch $(BACKEND_TESTS) \
	    || echo "KERAS_BACKEND=torch" >> $(LANES)/failed; \
	  $(PY) -m pytest -q --basetemp=$(LANES)/tmp-pytorch tests/pytorch --ignore=tests/pytorch/test_torch_traps.py \
	    || echo "tests/pytorch" >> $(LANES)/failed; \
	  TF_USE_LEGACY_KERAS=1 $(PY) -m pytest -q --basetemp=$(LANES)/tmp-legacy tests/legacy \
	    || echo "tests/legacy" >> $(LANES)/failed \
	) > $(LANES)/2-torch-pytorch-legacy.log 2>&1 & \
	rest=$$!; \
	trap 'for lane in $$jax $$rest; do pkill -P $$lane; kill $$lane; done 2>/dev/null; exit 130' INT TERM; \
	wait $$jax; wait $$rest; \
	for log in $(LANES)/*.log; do echo "===== $$log"; cat $$log; done; \
	if [ -s $(LANES)/failed ]; then echo "failed: $$(cat $(LANES)/failed | tr '\n' ' ')"; exit 1; fi

# Log directories at a URL, without TensorFlow: a real S3-compatible server (moto's standalone server, started
# by the tests on a port of its own) in the PyTorch ecosystem's venv, in a pytest process of its own.
test-remote: install-vision
	$(VISION_PY) -m pytest -q --basetemp=test-artifacts/tmp-remote tests/remote

# PyTorch's fine-tuning traps (issue #34: requires_grad=False in train(), FrozenBatchNorm2d, averaged models,
# gradient accumulation) in a pytest process of its own; torchvision's FrozenBatchNorm2d and the healthy
# torchvision / timm models run in the vision lane (tests/vision/test_frozen_bn.py).
test-traps: install-test
	$(PY) -m pytest -q --basetemp=test-artifacts/tmp-traps tests/pytorch/test_torch_traps.py

# Flax NNX and Linen (tb_bnstats.flax) in a pytest process of its own: its conftest forces two host devices
# (XLA_FLAGS) before JAX is imported, for the multi-device tests.
test-flax: install-test
	$(PY) -m pytest -q --basetemp=test-artifacts/tmp-flax tests/flax

# The probe's time budget and its traces (issue #33): a pytest process of its own, about a minute.
test-budget: install-test
	$(PY) -m pytest -q -p no:cacheprovider tests/budget

test: lint frontend-check test-frontend test-python test-remote test-vision test-flax test-traps test-budget

bundle:
	cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

bench: install
	$(PY) bench/overhead.py

bench-lightning: install-vision
	$(VISION_PY) bench/overhead_lightning.py

DEMO_LOGS ?= demo/logs
PORT ?= 6006
demo-logs: $(PY)
	$(PIP) install --quiet -e ".[tensorflow,demo,flax]" $(TORCH) $(TF_FOR_TF_KERAS)
	$(PIP) install --quiet --no-deps $(TF_KERAS)
	$(PY) demo/train.py --logdir $(DEMO_LOGS)
	$(PY) demo/train_torch.py --logdir $(DEMO_LOGS)
	$(PY) demo/train_replicas.py --logdir $(DEMO_LOGS)
	$(PY) demo/train_tf1.py --logdir $(DEMO_LOGS)
	$(PY) demo/train_flax.py --logdir $(DEMO_LOGS)

demo: demo-logs
	@echo "BN Convergence tab: http://localhost:$(PORT)/#bn_stats"
	$(VENV)/bin/tensorboard --logdir $(DEMO_LOGS) --port $(PORT)
