#!/usr/bin/env bash
# GPU check for an NVIDIA machine with no internet (the H200 device machine): build
# llama-cpp-python with CUDA, then run `localllm doctor`, `localllm bench` with every layer
# offloaded (and with `auto`), and the test suite. Not needed for CI.
#
# Two steps:
#
#   scripts/gpu-check.sh --prepare   # here, with the package index reachable: fills
#                                    # build/gpu-carry/ (git-ignored, < 64 MiB): a pruned
#                                    # llama-cpp-python source tarball and Python 3.12 wheels
#   scripts/gpu-check.sh             # there, from the repository root, with build/gpu-carry
#                                    # carried along; logs to $OUT when set
#
# The starter model (98 MB) is too big to carry with the rest, so unless MODEL=path.gguf is
# given (or build/gpu-carry/model.gguf exists) the bench runs on a generated llama model with
# random weights (16 layers, 1024 wide, f32, ~0.8 GB): speed depends on shape, not on weights.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARRY=$ROOT/build/gpu-carry
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PYVER=${PYVER:-3.12}
# Versions as in the development environment; the device image's own copies differ.
WHEELS=(
    "typer==0.29.2" "pydantic==2.13.4" "pydantic_core==2.46.4" "typing-inspection==0.4.2"
    "annotated-types==0.7.0" "annotated-doc==0.0.7" "shellingham==1.5.4"
    "rich==15.0.0" "markdown-it-py==4.3.0" "mdit-py-plugins==0.7.0" "mdurl==0.1.2"
    "textual==8.2.8" "platformdirs==4.14.8" "pytest-textual-snapshot==1.1.0" "syrupy==4.8.0"
    "gguf==0.19.0" "diskcache==5.6.3" "pytest-timeout==2.4.0"
)

prepare() {
    mkdir -p "$CARRY/wheels"
    local py=${PYTHON:-python3}
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$CARRY/wheels" "${WHEELS[@]}"
    # The sdist is 77 MB, mostly vocab files, docs, web UI assets and other backends' sources
    # that a CUDA build never reads.
    local cache=${LOCALLLM_BENCH_CACHE:-$HOME/.cache/localllm-bench}
    local sdist=$cache/llama_cpp_python-$VERSION.tar.gz
    if [[ ! -f $sdist ]]; then
        mkdir -p "$cache"
        "$py" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$cache" \
            "llama-cpp-python==$VERSION"
    fi
    local tmp
    tmp=$(mktemp -d)
    tar -xzf "$sdist" -C "$tmp"
    rm -rf "$tmp/llama_cpp_python-$VERSION/.git" # a git pack of the whole history: 40 MB
    local v=$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp
    rm -rf "$v/models" "$v/docs" "$v/tools/ui" "$v/tools/server/public" "$v/benches" \
        "$v/media" "$v/.devops" "$v/gguf-py/tests"
    # backends other than CPU and CUDA: CMake only enters their folders when switched on
    for b in cann et metal sycl vulkan webgpu zdnn opencl hexagon zendnn openvino virtgpu; do
        rm -rf "$v/ggml/src/ggml-$b"
    done
    XZ_OPT=-T0 tar -cJf "$CARRY/llama-cpp-python-src.tar.xz" -C "$tmp" "llama_cpp_python-$VERSION"
    rm -rf "$tmp"
    du -sh "$CARRY"
    echo "carry build/gpu-carry and run: bash scripts/gpu-check.sh" >&2
}

if [[ ${1:-} == --prepare ]]; then
    prepare
    exit 0
fi

LOG=${OUT:-/tmp}/gpu-check.log
exec > >(tee "$LOG") 2>&1
start=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - start)); }
cd "$ROOT"
PY=${PYTHON:-python3}
SITE=/tmp/gpu-check-site
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
export LOCALLLM_HOME=/tmp/gpu-check-home HF_HUB_OFFLINE=1

step "GPU"
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv || true

step "carried wheels"
mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
    "$CARRY"/wheels/*.whl
export PYTHONPATH=$SITE:$ROOT

step "build llama-cpp-python $VERSION with CUDA on $(nproc) cores"
SRC=/tmp/gpu-check-src
rm -rf "$SRC" && mkdir -p "$SRC"
tar -xJf "$CARRY/llama-cpp-python-src.tar.xz" -C "$SRC"
# the multimodal library (mtmd) is built too: `run --image` uses it
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 ${EXTRA_CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$SITE" \
    "$SRC/llama_cpp_python-$VERSION"
"$PY" -c 'import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), "no GPU offload"'

step "localllm doctor"
"$PY" -m localllm doctor
"$PY" -m localllm doctor --json > "${OUT:-/tmp}/doctor.json"

MODEL=${MODEL:-}
if [[ -z $MODEL && -f $CARRY/model.gguf ]]; then
    MODEL=$CARRY/model.gguf
fi
if [[ -z $MODEL ]]; then
    step "generate a 16-layer 1024-wide f32 model (random weights)"
    MODEL=/tmp/gpu-check-model.gguf
    "$PY" - "$MODEL" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from ggufgen import write_tiny_gguf
write_tiny_gguf(sys.argv[1], n_layer=16, n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816,
                name="gpu-check-16x1024")
PYEOF
fi

step "bench, every layer on the GPU"
"$PY" -m localllm bench "$MODEL" --gpu-layers 999 -p 512 -n 128 -r 5
"$PY" -m localllm bench "$MODEL" --gpu-layers 999 -p 512 -n 128 -r 3 --json \
    > "${OUT:-/tmp}/bench-gpu.json"
step "bench, gpu_layers auto"
"$PY" -m localllm bench "$MODEL" --gpu-layers auto -p 512 -n 128 -r 3
step "bench, CPU only, for scale"
"$PY" -m localllm bench "$MODEL" --gpu-layers 0 -p 512 -n 32 -r 2 --no-e2e

step "run --stats with auto offload"
"$PY" -m localllm run -m "$MODEL" "hello" -n 16 --temperature 0 --stats > /dev/null

step "image prompt: a random-weight projector (224 px, 14 px patches: 256 image tokens)"
"$PY" - "$MODEL" /tmp/gpu-check-mmproj.gguf /tmp/gpu-check-512.png <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from imagegen import png_bytes
from mmprojgen import write_tiny_mmproj
from localllm.modelfile import read_info
width = read_info(sys.argv[1]).embedding_size
write_tiny_mmproj(sys.argv[2], n_embd_text=width, n_embd=256, n_head=4, n_ff=1024, n_layer=4,
                  image_size=224, patch_size=14)
open(sys.argv[3], "wb").write(png_bytes(512, 512))
PYEOF
for layers in 999 0; do
    "$PY" -m localllm run -m "$MODEL" --mmproj /tmp/gpu-check-mmproj.gguf \
        --image /tmp/gpu-check-512.png "Describe this" -n 16 --temperature 0 --stats \
        --gpu-layers $layers > /dev/null
done

step "test suite (not the tests that fetch the starter model: no network there)"
status=0
"$PY" -m pytest -p no:cacheprovider -q -m "not slow" -k "not starter" -n 8 tests/ || status=$?
echo "pytest exit status: $status"

step "done"
