#!/usr/bin/env bash
#: Builds llama-cpp-python[server] into a venv outside the clone, for the `openai` policy's test.
#
#   stages/sample/scripts/install-llamacpp-server.sh      # idempotent; ~4-5 min on 2 cores
#
# The venv lands in ${SWEGYM_CACHE:-~/.cache/swegym}/venv-llamacpp. The test
# `openai_policy_llamacpp` runs only when that venv's python can import llama_cpp.server.
#
# Why the CMAKE_ARGS: this machine's CPU advertises AMX but the first AMX instruction raises
# SIGILL in the VM, and a default (-march=native) ggml build enables its AMX backend and dies on
# the first decode (see shared/baselines/llamacpp.md). So build with GGML_NATIVE=OFF, every
# non-AMX x86 feature explicitly, and AMX off.
set -euo pipefail

CACHE="${SWEGYM_CACHE:-$HOME/.cache/swegym}"
VENV="$CACHE/venv-llamacpp"
VERSION="${LLAMACPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "llama-cpp-python[server] already present in $VENV"
    exit 0
fi

mkdir -p "$CACHE"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
"$VENV/bin/pip" install --no-cache-dir "llama-cpp-python[server]==$VERSION"

"$VENV/bin/python" -c "import llama_cpp.server; print('llama-cpp-python', __import__('llama_cpp').__version__, 'ready in $VENV')"
