#!/usr/bin/env bash
# Build llama.cpp's RPC worker (ggml-rpc-server) and RPC-enabled shared libraries from the
# llama.cpp vendored in the installed llama-cpp-python's sdist: the same logic as
# `localllm worker --build` (localllm/rpcbuild.py), with the cache dir chosen by the caller.
#
#   scripts/build_rpc_server.sh                          # user data dir (what `worker` uses)
#   LOCALLLM_RPC_CACHE=~/.cache/localllm-rpc scripts/build_rpc_server.sh   # CI
#   CMAKE_ARGS="-DGGML_CUDA=on" scripts/build_rpc_server.sh                # a GPU worker
#
# Prints the library directory (for LLAMA_CPP_LIB_PATH) on its last line. JOBS=N limits the
# compile jobs; FORCE=1 rebuilds; LOCALLLM_RPC_LOG=FILE sends the compiler output there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exec env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'PYEOF'
import os
import sys

from localllm import rpcbuild

log_path = os.environ.get("LOCALLLM_RPC_LOG")
log = open(log_path, "w", encoding="utf-8") if log_path else sys.stderr  # noqa: SIM115
found = rpcbuild.build(
    force=bool(os.environ.get("FORCE")),
    say=lambda m: print(m, file=sys.stderr, flush=True),
    log=log,
)
print(f"worker: {found.worker}", file=sys.stderr)
print(f"build: {found.label}", file=sys.stderr)
print(found.lib_dir)
PYEOF
