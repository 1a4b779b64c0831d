#!/usr/bin/env bash
#: Builds llama-cpp-python[server] into a venv outside the clone, for the `openai` policy's test.
#
#   stages/sample/scripts/install-llamacpp-server.sh      # idempotent; ~4-5 min on 2 cores
#
# The venv lands in ${SWEGYM_CACHE:-~/.cache/swegym}/venv-llamacpp. The test
# `openai_policy_llamacpp` runs only when that venv's python can import llama_cpp.server.
#
# Why the CMAKE_ARGS: some of these VMs' CPUs advertise AMX but the first AMX instruction
# raises SIGILL, and a default (-march=native) ggml build enables its AMX backend and dies on
# the first decode (see scripts/baselines/llamacpp.md). So build with GGML_NATIVE=OFF, turn on
# each x86 feature that /proc/cpuinfo lists (machines differ: an EPYC here had no AVX-VNNI),
# and AMX off always. CI (.ci/run) runs this script, so the openai-policy test runs there.
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
# ggml option <- the /proc/cpuinfo flag it needs
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
cmake_args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
for pair in SSE42:sse4_2 AVX:avx AVX2:avx2 FMA:fma F16C:f16c BMI2:bmi2 AVX_VNNI:avx_vnni \
            AVX512:avx512f AVX512_VBMI:avx512vbmi AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16; do
    option=${pair%%:*} flag=${pair#*:}
    if [[ "$cpu_flags" == *" $flag "* ]]; then cmake_args+=" -DGGML_$option=ON"; else cmake_args+=" -DGGML_$option=OFF"; fi
done
echo "building llama-cpp-python $VERSION with CMAKE_ARGS=$cmake_args"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
CMAKE_ARGS="$cmake_args" \
"$VENV/bin/pip" install --no-cache-dir "llama-cpp-python[server]==$VERSION"

"$VENV/bin/python" -c "import llama_cpp.server; print('llama-cpp-python', __import__('llama_cpp').__version__, 'ready in $VENV')"
