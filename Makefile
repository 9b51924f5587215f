# The two commands of the README:
#   make demo   -- install, train the demo runs, start TensorBoard with the BN Convergence tab
#   make test   -- install everything the tests need, then run them all
# Everything goes into a virtual environment in .venv (override with VENV=...).

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-vision install-test system-deps frontend-check lint test test-python test-lane1 test-lane2 test-frontend bench bench-lightning demo demo-logs bundle

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

# Everything under TensorFlow first (it serves TensorBoard and drives a browser), then the rest in two lanes
# at once, one per core, each suite in a pytest process of its own:
#   lane 1: Keras on JAX, Flax (tb_bnstats.flax; its conftest forces two host devices before JAX is
#           imported), the probe's time budget, log directories at a URL (a real S3-compatible server:
#           moto's standalone server, in the PyTorch ecosystem's venv, which has no TensorFlow);
#   lane 2: Keras on torch, PyTorch (its fine-tuning traps included), TensorFlow 1-style code and tf_keras
#           (TF_USE_LEGACY_KERAS=1 must be set before TensorFlow is imported), then Lightning, the Hugging
#           Face Trainer, timm and torchvision in the PyTorch ecosystem's venv.
# Keras picks its backend once per process: the tests run again per backend are those marked `backend`
# (pytestmark = pytest.mark.backend in their file). Each lane's output is printed when both are done, and
# the target fails when any suite failed (an interrupt stops both). `make test-lane1` / `test-lane2` run one.
LANES := test-artifacts/lanes
OWN_PROCESS := tests/pytorch tests/legacy tests/remote tests/vision tests/flax tests/budget
BACKEND_TESTS := -m backend tests $(addprefix --ignore=,$(OWN_PROCESS))
suite = $(1) -m pytest -q -p no:cacheprovider --basetemp=$(LANES)/tmp-$(2) $(3) || echo "$(2)" >> $(LANES)/failed
LANE1 := $(call suite,KERAS_BACKEND=jax $(PY),jax,$(BACKEND_TESTS)); \
	$(call suite,$(PY),flax,tests/flax); \
	$(call suite,$(PY),budget,tests/budget); \
	$(call suite,$(VISION_PY),remote,tests/remote)
LANE2 := $(call suite,KERAS_BACKEND=torch $(PY),torch,$(BACKEND_TESTS)); \
	$(call suite,$(PY),pytorch,tests/pytorch); \
	$(call suite,TF_USE_LEGACY_KERAS=1 $(PY),legacy,tests/legacy); \
	$(call suite,$(VISION_PY),vision,tests/vision)

test-python: install-test install-vision
	$(PY) -m pytest -q tests $(addprefix --ignore=,$(OWN_PROCESS))
	@rm -rf $(LANES); mkdir -p $(LANES); \
	( $(LANE1) ) > $(LANES)/1.log 2>&1 & \
	one=$$!; \
	( $(LANE2) ) > $(LANES)/2.log 2>&1 & \
	two=$$!; \
	trap 'for lane in $$one $$two; do pkill -P $$lane; kill $$lane; done 2>/dev/null; exit 130' INT TERM; \
	wait $$one; wait $$two; \
	for log in $(LANES)/*.log; do echo "===== $$log"; cat $$log; done; \
	if [ -s $(LANES)/failed ]; then echo "failed: $$(cat $(LANES)/failed | tr '\n' ' ')"; exit 1; fi

test-lane1 test-lane2: install-test install-vision
	@rm -rf $(LANES); mkdir -p $(LANES); ( $(if $(filter test-lane1,$@),$(LANE1),$(LANE2)) ); \
	if [ -s $(LANES)/failed ]; then echo "failed: $$(cat $(LANES)/failed | tr '\n' ' ')"; exit 1; fi

test: lint frontend-check test-frontend test-python

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
