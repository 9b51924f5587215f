#!/usr/bin/env bash
# tb_bnstats at its defaults against no monitoring on a GPU: Keras ResNet50 (batch 64, XLA) and PyTorch
# ResNet-50 (eager and torch.compile), one process per framework (bench/gpu.py says what is measured).
#
# One command on a fresh Linux GPU machine (NVIDIA driver for CUDA 12, Python 3.10-3.12), from the
# repository root:
#     bash bench/gpu.sh            # the real run
#     bash bench/gpu.sh --smoke    # a few steps at 32x32: checks that everything runs (any machine)
# It makes two virtualenvs and installs into them (PyPI's Linux wheels are the CUDA builds):
#     .venv-gpu-keras: tensorflow[and-cuda]==2.21.*  keras==3.15.*  and tb_bnstats (pip install -e .)
#     .venv-gpu-torch: torch==2.14.1  torchvision==0.29.1  and tb_bnstats (pip install -e .), no TensorFlow
# GPU_BENCH_PYTHON=/path/to/python skips the virtualenvs and runs both with that interpreter (one that has
# what is listed above; without torchvision a hand-written ResNet-50 of the same layout is used).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${GPU_BENCH_PYTHON:-}" ]; then
  keras_py=$GPU_BENCH_PYTHON torch_py=$GPU_BENCH_PYTHON
else
  python3 -m venv .venv-gpu-keras && .venv-gpu-keras/bin/pip install --quiet "tensorflow[and-cuda]==2.21.*" "keras==3.15.*" -e .
  python3 -m venv .venv-gpu-torch && .venv-gpu-torch/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 -e .
  keras_py=.venv-gpu-keras/bin/python torch_py=.venv-gpu-torch/bin/python
fi
"$keras_py" bench/gpu.py --framework keras "$@"
"$torch_py" bench/gpu.py --framework torch "$@"
