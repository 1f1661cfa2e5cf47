"""Splitting a model across llama.cpp RPC workers (``localllm worker``, ``--rpc``).

The first group runs everywhere: ``--rpc`` on a build without RPC, the profile field, the
worker's refusal of a LAN address, probing workers that are down or silent.

The second group needs llama.cpp built with RPC from the installed llama-cpp-python's sources
(``scripts/build_rpc_server.sh``; ``.ci/run`` builds it into ``$LOCALLLM_RPC_CACHE``, default
``~/.cache/localllm-rpc``). Without it those tests skip and name what is missing. They start two
real workers on 127.0.0.1 (one thread each, ``--mem`` small and unequal so the split is
visible) and run the engine in subprocesses with ``LLAMA_CPP_LIB_PATH`` pointing at the RPC
libraries: this test process has the PyPI libraries loaded.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from localllm import profiles, rpcwire
from localllm.errors import ProfileError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RPC_CACHE = Path.home() / ".cache" / "localllm-rpc"
PROMPT = "List three colours of the rainbow."


def _rpc_cache() -> Path:
    value = os.environ.get("LOCALLLM_RPC_CACHE")
    return Path(value) if value else DEFAULT_RPC_CACHE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def localllm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=REPO,
    )


def _installed_has_rpc() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(lib.glob("*ggml-rpc*"))


# -- everywhere ----------------------------------------------------------------------------


def test_rpc_on_a_build_without_rpc_is_a_usage_error(tiny_model: Path, tmp_path: Path) -> None:
    if _installed_has_rpc():
        pytest.skip("the installed llama-cpp-python has RPC: nothing to refuse")
    proc = localllm(
        "run",
        "-m",
        str(tiny_model),
        "hi",
        "--rpc",
        "127.0.0.1:50052",
        env={"LOCALLLM_RPC_CACHE": str(tmp_path / "no-builds")},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "no RPC backend" in lines[0]
    assert "localllm worker --build" in lines[0]
    assert 'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall' in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["serve", "bench"])
def test_serve_and_bench_refuse_rpc_without_it(
    command: str, tiny_model: Path, tmp_path: Path
) -> None:
    if _installed_has_rpc():
        pytest.skip("the installed llama-cpp-python has RPC: nothing to refuse")
    args = ["-m", str(tiny_model)] if command == "serve" else [str(tiny_model)]
    proc = localllm(
        command,
        *args,
        "--rpc",
        "127.0.0.1:50052",
        env={"LOCALLLM_RPC_CACHE": str(tmp_path / "no-builds")},
    )
    assert proc.returncode == 2, proc.stderr
    assert "no RPC backend" in proc.stderr and "localllm worker --build" in proc.stderr


def test_profile_rpc_field_is_validated(tmp_path: Path, isolated_home: Path) -> None:
    folder = isolated_home / "config" / "profiles"
    folder.mkdir(parents=True)
    (folder / "split.yaml").write_text("rpc: ['10.0.0.2:50052', 'gpu-box:50053']\n")
    assert profiles.load_profile("split").rpc == ("10.0.0.2:50052", "gpu-box:50053")
    (folder / "one.yaml").write_text("rpc: 10.0.0.2:50052,10.0.0.3:50052\n")
    assert profiles.load_profile("one").rpc == ("10.0.0.2:50052", "10.0.0.3:50052")
    for bad, why in (
        ("rpc: ['10.0.0.2']", "is not HOST:PORT"),
        ("rpc: ['10.0.0.2:0']", "port must be a number"),
        ("rpc: ['10.0.0.2:http']", "port must be a number"),
        ("rpc: ['[::1]:50052']", "IPv6"),
        ("rpc: ['a:1', 'a:1']", "listed twice"),
        ("rpc: [50052]", "must be HOST:PORT"),
        ("rpc: {a: 1}", "list of HOST:PORT"),
    ):
        (folder / "bad.yaml").write_text(bad + "\n")
        with pytest.raises(ProfileError) as info:
            profiles.load_profile("bad")
        assert "rpc" in info.value.message and why in info.value.message, bad
    assert profiles.resolve(None, {"rpc": "h1:1,h2:2"}).rpc == ("h1:1", "h2:2")
    with pytest.raises(ProfileError, match="--rpc"):
        profiles.resolve(None, {"rpc": "h1"})
    assert profiles.resolve(None, {}).rpc == ()


def test_worker_refuses_a_lan_address_without_the_flag() -> None:
    for host in ("0.0.0.0", "192.168.1.20"):
        proc = localllm("worker", "--host", host, "--port", "50052")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
        assert "no authentication" in proc.stderr
        assert "--i-understand-this-is-unauthenticated" in proc.stderr


def test_probe_names_a_worker_that_is_down() -> None:
    port = _free_port()
    info = rpcwire.probe(f"127.0.0.1:{port}", timeout=5)
    assert not info.reachable
    assert "refused" in info.problem.lower()


def test_probe_gives_up_on_a_worker_that_never_answers() -> None:
    """A worker busy with another client accepts the connection but never answers the
    handshake: the probe must come back (llama.cpp itself would wait forever)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        info = rpcwire.probe(f"127.0.0.1:{port}", timeout=0.5)
    assert info.reachable and "no handshake" in info.problem and not info.protocol


def test_doctor_reports_an_unreachable_worker() -> None:
    port = _free_port()
    proc = localllm("doctor", "--json", "--rpc", f"127.0.0.1:{port}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["rpc"]
    (worker,) = report["workers"]
    assert worker["endpoint"] == f"127.0.0.1:{port}"
    assert worker["reachable"] is False and "refused" in worker["problem"].lower()
    if not report["available"]:
        assert "localllm worker --build" in report["fix"] and "GGML_RPC=on" in report["fix"]


def test_doctor_without_an_rpc_build_prints_the_fixes(tmp_path: Path) -> None:
    if _installed_has_rpc():
        pytest.skip("the installed llama-cpp-python has RPC")
    proc = localllm("doctor", env={"LOCALLLM_RPC_CACHE": str(tmp_path / "none")})
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RPC "))
    assert "no RPC backend" in line and "localllm worker --build" in line
    assert 'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir' in line


# -- with an RPC build -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def rpc_build() -> object:
    """The localllm RPC build for the installed llama-cpp-python, or a skip naming it."""
    from localllm import rpcbuild

    cache = _rpc_cache()
    old = os.environ.get("LOCALLLM_RPC_CACHE")
    os.environ["LOCALLLM_RPC_CACHE"] = str(cache)
    try:
        found = rpcbuild.find_build()
    finally:
        if old is None:
            del os.environ["LOCALLLM_RPC_CACHE"]
        else:
            os.environ["LOCALLLM_RPC_CACHE"] = old
    if found is None:
        pytest.skip(
            f"no llama.cpp RPC build for llama-cpp-python {rpcbuild.installed_version()} in "
            f"{cache}: run LOCALLLM_RPC_CACHE={cache} scripts/build_rpc_server.sh (.ci/run does)"
        )
    return found


def _rpc_env(build: object) -> dict[str, str]:
    return {
        "LOCALLLM_RPC_CACHE": str(Path(build.root).parent),  # type: ignore[attr-defined]
        "LLAMA_CPP_LIB_PATH": str(build.lib_dir),  # type: ignore[attr-defined]
    }


class Worker:
    """A `localllm worker` subprocess; ``ready`` once it said it listens."""

    def __init__(self, port: int, mem: int | None, env: dict[str, str]) -> None:
        args = ["worker", "--port", str(port), "--threads", "1"]
        if mem is not None:
            args += ["--mem", str(mem)]
        self.endpoint = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localllm", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
            cwd=REPO,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"worker exited before {text!r}:\n{''.join(self.output)}")
            self.output.append(line)
            if text in line:
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def workers(rpc_build: object) -> Iterator[list[Worker]]:
    """Two workers on 127.0.0.1 offering 200 and 500 MiB: llama.cpp splits the offloaded
    layers between them by that memory."""
    env = _rpc_env(rpc_build)
    started = [Worker(_free_port(), 200, env), Worker(_free_port(), 500, env)]
    try:
        for w in started:
            w.wait_for("ready: listening")
        yield started
    finally:
        for w in started:
            w.stop()


def _greedy(model: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """Greedy, with flash attention off on both sides: ``auto`` switches it on once layers
    are offloaded (llama.cpp's choice for GPUs), and that other attention kernel rounds
    differently from the plain one the local run uses."""
    home = Path(os.environ["LOCALLLM_HOME"])
    folder = home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "greedy.yaml").write_text("temperature: 0\nflash_attn: false\n")
    return localllm(
        "run",
        "-m",
        str(model),
        PROMPT,
        "-p",
        "greedy",
        "--seed",
        "1",
        "-n",
        "32",
        "--ctx",
        "512",
        "--json",
        "--stats",
        *extra,
        env=env,
    )


def _split(stderr: str) -> dict[str, tuple[int, float]]:
    line = next(x for x in stderr.splitlines() if x.startswith("split: "))
    found = re.findall(r"(\S+) (\d+) layers (\d+) MiB", line.removeprefix("split: "))
    return {name: (int(layers), float(mib)) for name, layers, mib in found}


def test_split_across_two_workers_answers_like_local(
    rpc_build: object, workers: list[Worker], starter_model: Path
) -> None:
    env = _rpc_env(rpc_build)
    local = _greedy(starter_model, env)
    assert local.returncode == 0, local.stderr
    endpoints = ",".join(w.endpoint for w in workers)
    split = _greedy(starter_model, env, "--rpc", endpoints, "--gpu-layers", "21")
    assert split.returncode == 0, split.stderr
    a, b = json.loads(local.stdout), json.loads(split.stdout)
    assert a["text"].strip(), local.stdout
    assert b["text"] == a["text"]  # greedy: the same tokens, one for one
    shares = _split(split.stderr)
    first, second = (shares[w.endpoint] for w in workers)
    assert shares["CPU"][0] == 31 - 21  # layers that stayed here
    assert first[0] + second[0] == 21
    assert 0 < first[0] < second[0]  # 200 MiB vs 500 MiB offered: llama.cpp splits by memory
    assert first[1] > 0 and second[1] > 0
    assert "RPC 21/31 layers" in split.stderr and "flash attention off" in split.stderr


def test_auto_layers_count_the_workers_memory(
    rpc_build: object, workers: list[Worker], starter_model: Path
) -> None:
    """``gpu_layers: auto`` fits layers into the memory the workers offer (200 + 500 MiB,
    capped by --mem), by the same arithmetic as for a local GPU."""
    from localllm import engine, offload

    shape = engine._model_shape(starter_model)
    assert shape is not None
    sizes = offload.layer_sizes(
        shape["file_size"],
        shape["n_layer"],
        shape["n_embd"],
        shape["n_head"],
        shape["n_head_kv"],
        512,
        key_length=shape.get("key_length"),
        value_length=shape.get("value_length"),
        tensors=shape.get("tensors"),
    )
    expected = offload.choose_gpu_layers((200 + 500) << 20, sizes)
    assert 0 < expected.layers < expected.total  # the figures were chosen for a partial fit
    endpoints = ",".join(w.endpoint for w in workers)
    proc = _greedy(starter_model, _rpc_env(rpc_build), "--rpc", endpoints)
    assert proc.returncode == 0, proc.stderr
    assert f"RPC {expected.layers}/{expected.total} layers (auto: partial" in proc.stderr
    shares = _split(proc.stderr)
    assert sum(shares[w.endpoint][0] for w in workers) == expected.layers


def test_a_worker_down_at_load_is_named(rpc_build: object, tiny_model: Path) -> None:
    port = _free_port()
    proc = localllm(
        "run", "-m", str(tiny_model), "hi", "--rpc", f"127.0.0.1:{port}", env=_rpc_env(rpc_build)
    )
    assert proc.returncode == 6, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: RPC worker 127.0.0.1:{port} is not reachable")
    assert "Traceback" not in proc.stderr and "GGML_ABORT" not in proc.stderr


def test_doctor_asks_live_workers(rpc_build: object, workers: list[Worker]) -> None:
    proc = localllm(
        "doctor", "--json", "--rpc", ",".join(w.endpoint for w in workers), env=_rpc_env(rpc_build)
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["rpc"]
    assert report["available"]
    protocol = rpc_build.info["rpc_protocol"]  # type: ignore[attr-defined]
    for entry, mem in zip(report["workers"], (200, 500), strict=True):
        assert entry["reachable"] and entry["protocol"] == protocol
        assert entry["same_protocol"] is True
        assert entry["free_bytes"] == mem << 20  # --mem caps what the worker offers
    text = localllm("doctor", "--rpc", workers[0].endpoint, env=_rpc_env(rpc_build)).stdout
    assert f"worker {workers[0].endpoint}" in text and "same as this build" in text


def test_worker_says_its_build_and_stops_on_ctrl_c(rpc_build: object) -> None:
    w = Worker(_free_port(), None, _rpc_env(rpc_build))
    try:
        line = w.wait_for("localllm worker:")
        assert rpc_build.info["ggml_commit"] in line  # type: ignore[attr-defined]
        w.wait_for("ready: listening")
        assert rpcwire.probe(w.endpoint).protocol == rpc_build.info["rpc_protocol"]  # type: ignore[attr-defined]
    finally:
        code = w.stop()
    assert code == 0
    assert not rpcwire.probe(w.endpoint, timeout=2).reachable


def test_status_bar_label_from_a_real_split(
    rpc_build: object, workers: list[Worker], starter_model: Path
) -> None:
    """The chat's status bar label comes from the engine's own load log (layers per device,
    local first), for an engine loaded the way the TUI loads it."""
    code = (
        "import sys\n"
        "from localllm import profiles\n"
        "from localllm.loading import open_engine\n"
        "from localllm.tui.app import _split_label\n"
        "s = profiles.resolve(None, {'rpc': sys.argv[2], 'gpu_layers': 21,"
        " 'context_length': 256})\n"
        "e = open_engine(sys.argv[1], s)\n"
        "print(e.options.backend, _split_label(e))\n"
    )
    endpoints = ",".join(w.endpoint for w in workers)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(starter_model), endpoints],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **_rpc_env(rpc_build)},
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    backend, label = proc.stdout.strip().split(" ", 1)
    assert backend == "RPC"
    m = re.fullmatch(r"split (\d+)\+(\d+)\+(\d+)", label)
    assert m, label
    here, first, second = map(int, m.groups())
    assert (here, first + second) == (10, 21) and first < second


def test_a_client_that_vanishes_does_not_kill_the_worker(rpc_build: object) -> None:
    """llama.cpp's server writes with plain send(): a client gone before its reply (a probe
    that timed out) used to kill the worker with SIGPIPE."""
    import struct

    w = Worker(_free_port(), None, _rpc_env(rpc_build))
    try:
        w.wait_for("ready: listening")
        host, port = w.endpoint.split(":")
        for _ in range(3):
            with socket.create_connection((host, int(port))) as s:
                s.sendall(struct.pack("<BQ", rpcwire.CMD_HELLO, 24) + bytes(24))
            w.wait_for("Client connection closed")
        info = rpcwire.probe(w.endpoint)
        assert info.protocol and not info.problem
        assert w.proc.poll() is None
    finally:
        assert w.stop() == 0


def test_worker_build_finds_the_existing_build(rpc_build: object) -> None:
    proc = localllm("worker", "--build", env=_rpc_env(rpc_build))
    assert proc.returncode == 0, proc.stderr
    assert f"worker:    {rpc_build.worker}" in proc.stdout  # type: ignore[attr-defined]
    assert f"libraries: {rpc_build.lib_dir}" in proc.stdout  # type: ignore[attr-defined]
    assert "RPC protocol" in proc.stdout


def test_a_worker_gone_before_a_second_load_is_named(rpc_build: object) -> None:
    """A process that registered a worker (a server loading one model after another) checks
    it again before the next load: llama.cpp would abort on the failed reconnect."""
    code = (
        "import sys\n"
        "from localllm import rpc\n"
        "from localllm.errors import InferenceError\n"
        "rpc.attach([sys.argv[1]])\n"
        "print('attached', flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        "    rpc.attach([sys.argv[1]])\n"
        "except InferenceError as exc:\n"
        "    print('error:', exc.message, flush=True)\n"
    )
    w = Worker(_free_port(), None, _rpc_env(rpc_build))
    w.wait_for("ready: listening")
    client = subprocess.Popen(
        [sys.executable, "-c", code, w.endpoint],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_rpc_env(rpc_build)},
        cwd=REPO,
    )
    assert client.stdout is not None and client.stdin is not None
    try:
        assert client.stdout.readline().strip() == "attached"
    finally:
        assert w.stop() == 0
    out, err = client.communicate("\n", timeout=120)
    assert client.returncode == 0, err
    assert f"error: RPC worker {w.endpoint} is not reachable" in out


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


HANG_PROBE = """
import sys, time
from localllm import loading
from localllm.errors import EngineCrashed
from localllm.profiles import Profile
profile = Profile(temperature=0.0, max_tokens=32, rpc=(sys.argv[2],), gpu_layers=99,
                  flash_attn=False)
engine = loading.open_engine(sys.argv[1], profile, need_tokens=128)
print("loaded", flush=True)
sys.stdin.readline()  # the test stops the worker here
try:
    list(engine.generate("hello there", profile))
    print("answered", flush=True)
except EngineCrashed as exc:
    print("error:", exc.message, "|", exc.hint, flush=True)
engine.close()
"""


def test_a_worker_that_hangs_is_given_up_after_the_rpc_timeout(
    rpc_build: object, tiny_model: Path
) -> None:
    """llama.cpp's RPC client waits for a worker without a limit: a worker that stops
    (SIGSTOP: its connections stay open) would hold the generation for good. The engine
    process is stopped after LOCALLLM_RPC_TIMEOUT seconds without a token, and the error
    names the worker that does not answer."""
    env = _rpc_env(rpc_build)
    w = Worker(_free_port(), None, env)
    w.wait_for("ready: listening")
    client = subprocess.Popen(
        [sys.executable, "-c", HANG_PROBE, str(tiny_model), w.endpoint],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "LOCALLLM_RPC_TIMEOUT": "2"},
        cwd=REPO,
    )
    assert client.stdout is not None and client.stdin is not None
    servers = _children(w.proc.pid)
    try:
        assert client.stdout.readline().strip() == "loaded", client.stderr
        assert servers, "the worker's llama.cpp server process"
        for pid in servers:
            os.kill(pid, signal.SIGSTOP)
        out, err = client.communicate("\n", timeout=120)
    finally:
        for pid in servers:
            os.kill(pid, signal.SIGCONT)
        w.stop()
    assert client.returncode == 0, err
    assert out.startswith("error: no token for 2 s"), out + err
    assert f"RPC worker not answering: {w.endpoint}" in out
    assert "LOCALLLM_RPC_TIMEOUT" in out


@pytest.mark.parametrize("value", ["soon", "-3", "inf", "nan"])
def test_a_bad_rpc_timeout_is_a_usage_error(
    value: str, rpc_build: object, tiny_model: Path
) -> None:
    env = {**_rpc_env(rpc_build), "LOCALLLM_RPC_TIMEOUT": value}
    proc = localllm("run", "-m", str(tiny_model), "hi", "--rpc", "127.0.0.1:9", env=env)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: LOCALLLM_RPC_TIMEOUT must be a number of seconds, 0 or off, not '{value}'"
    )


def test_run_in_a_terminal_ends_the_partial_answer_before_the_hang_error(
    rpc_build: object, starter_model: Path
) -> None:
    """What a person sees when a worker hangs mid-answer: the answer so far, then the error
    on a line of its own, exit 6 (stdout and stderr on one pseudo-terminal)."""
    import pty
    import select

    env = _rpc_env(rpc_build)
    w = Worker(_free_port(), None, env)
    w.wait_for("ready: listening")
    servers = _children(w.proc.pid)
    leader, follower = pty.openpty()
    args = ["run", "-m", str(starter_model), "--rpc", w.endpoint, "--gpu-layers", "99",
            "-n", "2000", "--temperature", "0", "Write a long story about the sea."]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        # room for a busy machine's prompt evaluation before the answer begins, which the
        # watchdog would otherwise take for a hang
        env={**os.environ, **env, "LOCALLLM_RPC_TIMEOUT": "10"},
        cwd=REPO,
    )
    os.close(follower)
    seen = b""
    stopped = False
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 120)
            assert ready, seen.decode(errors="replace")
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not stopped and b"The" in seen:  # the answer has begun: stop the worker
                for pid in servers:
                    os.kill(pid, signal.SIGSTOP)
                stopped = True
        assert proc.wait(timeout=60) == 6
    finally:
        os.close(leader)
        for pid in servers:
            os.kill(pid, signal.SIGCONT)
        w.stop()
    text = seen.decode(errors="replace").replace("\r\n", "\n")
    assert stopped, text
    answer, _, error = text.rpartition("\nerror: no token for 10 s")
    assert error and "The" in answer, text
    assert "Traceback" not in text and "GGML_ABORT" not in text
