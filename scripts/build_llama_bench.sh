#!/usr/bin/env bash
# Build native llama.cpp `llama-bench` from the llama.cpp sources vendored in the
# llama-cpp-python sdist of the installed version (`pip download --no-binary llama-cpp-python`;
# `:all:` would also build every build dependency from source), into a cache dir outside the repository.
#
#   scripts/build_llama_bench.sh            # prints the path of the binary on its last line
#   LOCALLLM_BENCH_CACHE=DIR CMAKE_ARGS="-DGGML_CUDA=on" scripts/build_llama_bench.sh
#   LLAMA_TARGET=llama-server scripts/build_llama_bench.sh   # the native server (scripts/build_llama_server.sh)
#
# Every target shares one build dir, so adding `llama-server` to a dir that already holds
# llama-bench compiles only the server, common and mtmd (ggml and llama are reused). The server is
# configured without its web UI (no npm, no download: the Hugging Face Hub may be unreachable).
#
# The binary is never committed. It is built with llama.cpp's defaults (native CPU features,
# OpenMP), as pip builds the Python package, so the kernels compare like for like.
set -euo pipefail

PY=${PYTHON:-python3}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')}
CACHE=${LOCALLLM_BENCH_CACHE:-$HOME/.cache/localllm-bench}
TAG=${BENCH_TAG:-cpu}
BUILD=$CACHE/build-$VERSION-$TAG
TARGET=${LLAMA_TARGET:-llama-bench}
BIN=$BUILD/bin/$TARGET
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

if [[ -x $BIN && -z ${FORCE:-} ]]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE"
SDIST=$(ls "$CACHE"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)
if [[ -z $SDIST ]]; then
    echo "fetching the llama-cpp-python $VERSION sdist…" >&2
    "$PY" -m pip download --no-deps --no-binary llama-cpp-python -q -d "$CACHE" "llama-cpp-python==$VERSION" >&2
    SDIST=$(ls "$CACHE"/llama_cpp_python-"$VERSION".tar.gz)
fi
SRC=$CACHE/llama_cpp_python-$VERSION
if [[ ! -d $SRC/vendor/llama.cpp ]]; then
    tar -xzf "$SDIST" -C "$CACHE"
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
# shellcheck disable=SC2086
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TOOLS=ON \
    ${CMAKE_ARGS:-} >&2
cmake --build "$BUILD" --target "$TARGET" -j "$JOBS" >&2
echo "$BIN"
