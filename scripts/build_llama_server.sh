#!/usr/bin/env bash
# Build native llama.cpp `llama-server` from the same vendored sources and build dir as
# scripts/build_llama_bench.sh (for scripts/bench_serve.py --native); prints the binary's path
# on its last line. The binary is cached outside the repository and never committed.
set -euo pipefail
LLAMA_TARGET=llama-server exec "$(dirname "$0")/build_llama_bench.sh" "$@"
