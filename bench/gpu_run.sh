#!/usr/bin/env bash
# The GPU checks, as one run on the device machine (see README, Performance): the carried wheels
# of the web stack (the image has torch but not FastAPI), the HTTP, engine and LoRA tests with the
# service on CUDA, then bench/kernels.py and bench/training.py on CUDA. Results go to $OUT.
# Where the machine cannot download, fetch the wheels first, here, for its Python (3.12 there):
#   pip download --dest .device-wheels --python-version 3.12 --only-binary=:all: \
#     --platform manylinux_2_17_x86_64 fastapi pydantic-settings python-multipart uvicorn orjson \
#     google-re2
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
PY=${PY:-python3}
if compgen -G ".device-wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/deps .device-wheels/*.whl 2>&1 | tail -3
fi
export PYTHONPATH=/tmp/deps:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  2>&1 | tee "$OUT/gpu.txt"
LORASERVE_TEST_DEVICE=cuda timeout 240 $PY -m pytest -q -p no:cacheprovider -x \
  tests/lora tests/engine tests/api 2>&1 | tail -20 | tee "$OUT/gpu-tests.txt"
timeout 200 $PY bench/kernels.py --device cuda --budget 0.15 --out "$OUT/kernels-cuda.json" \
  2>&1 | tee "$OUT/kernels-cuda.txt"
timeout 120 $PY bench/training.py --device cuda --out "$OUT/training-cuda.json" \
  2>&1 | tee "$OUT/training-cuda.txt"
