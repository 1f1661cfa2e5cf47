"""``localllm run`` in reasoning and instant modes: the rendered prompt per family
(``--show-prompt``), reasoning on stderr and the answer on stdout, ``--json`` per-part fields,
the reasoning flags, and the notes about leaked or unfinished reasoning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ggufgen import CHATML_TEMPLATE, gpt2_vocab, write_tiny_gguf
from test_reasoning import (
    DEEPSEEK_R1_TEMPLATE,
    GPT_OSS_TEMPLATE,
    GRANITE_TEMPLATE,
    QWEN3_TEMPLATE,
)
from typer.testing import CliRunner

from localllm import reasoning
from localllm.cli import app
from localllm.session import ChatSession

runner = CliRunner()

HARMONY_SPECIAL = (
    "<|endoftext|>",
    "<|start|>",
    "<|channel|>",
    "<|message|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mode-models")
    harmony = gpt2_vocab(special=HARMONY_SPECIAL, user_defined=(), eos="<|return|>")
    return {
        "qwen3": write_tiny_gguf(folder / "qwen3.gguf", chat_template=QWEN3_TEMPLATE),
        "granite": write_tiny_gguf(folder / "granite.gguf", chat_template=GRANITE_TEMPLATE),
        "r1": write_tiny_gguf(folder / "r1.gguf", chat_template=DEEPSEEK_R1_TEMPLATE),
        "gpt-oss": write_tiny_gguf(
            folder / "gpt-oss.gguf", chat_template=GPT_OSS_TEMPLATE, vocab=harmony
        ),
        "chatml": write_tiny_gguf(folder / "chatml.gguf", chat_template=CHATML_TEMPLATE),
    }


def localllm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def show_prompt(model: Path, *args: str) -> Any:
    result = runner.invoke(app, ["run", "-m", str(model), "hi", "--show-prompt", *args])
    assert result.exit_code == 0, result.output
    return result


QWEN3_BASE = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
GRANITE_SYSTEM = (
    "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024.\n"
    "You are Granite, developed by IBM."
)
GRANITE_END = (
    "<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>hi<|end_of_text|>\n"
    "<|start_of_role|>assistant<|end_of_role|>"
)
R1_BASE = "<|endoftext|><｜User｜>hi<｜Assistant｜><think>\n"
OSS_HEAD = (
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n\nReasoning: {effort}\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every "
    "message.<|end|><|start|>user<|message|>hi<|end|><|start|>assistant"
)
PROMPTS = {
    ("qwen3", "reasoning"): QWEN3_BASE,
    ("qwen3", "instant"): QWEN3_BASE + "<think>\n\n</think>\n\n",
    ("r1", "reasoning"): R1_BASE,
    ("r1", "instant"): R1_BASE + "\n\n</think>\n\n",
    ("gpt-oss", "reasoning"): OSS_HEAD.format(effort="medium"),
    ("gpt-oss", "instant"): OSS_HEAD.format(effort="low") + reasoning.HARMONY_SKIP_ANALYSIS,
    ("chatml", "reasoning"): (
        f"<|im_start|>system\n{reasoning.REASONING_INSTRUCTION}<|im_end|>\n" + QWEN3_BASE
    ),
    ("chatml", "instant"): QWEN3_BASE,
}
ADAPTERS = {
    "qwen3": "enable_thinking",
    "granite": "thinking",
    "r1": "prefill",
    "gpt-oss": "harmony",
    "chatml": "instruction",
}


@pytest.mark.parametrize(("family", "mode"), sorted(PROMPTS))
def test_show_prompt_per_family_and_mode(models: dict[str, Path], family: str, mode: str) -> None:
    result = show_prompt(models[family], "--mode", mode)
    assert result.stdout == PROMPTS[family, mode]
    assert f"mode: {mode}" in result.stderr
    assert f"reasoning adapter: {ADAPTERS[family]}" in result.stderr


def test_show_prompt_granite(models: dict[str, Path]) -> None:
    on = show_prompt(models["granite"], "--mode", "reasoning").stdout
    off = show_prompt(models["granite"], "--mode", "instant").stdout
    assert off == GRANITE_SYSTEM + GRANITE_END
    assert on.startswith(GRANITE_SYSTEM + " You are a helpful AI assistant.")
    assert "<think></think>" in on and on.endswith(GRANITE_END)


def test_show_prompt_flags_budget_zero_and_forced_format(models: dict[str, Path]) -> None:
    zero = show_prompt(models["qwen3"], "--mode", "reasoning", "--reasoning-budget", "0")
    assert zero.stdout == PROMPTS["qwen3", "instant"]
    assert "mode: instant" in zero.stderr
    forced = show_prompt(models["chatml"], "--mode", "instant", "--reasoning-format", "prefill")
    assert forced.stdout == QWEN3_BASE + "<think>\n\n</think>\n\n"
    # The built-in profiles carry the mode.
    assert show_prompt(models["qwen3"], "-p", "instant").stdout == PROMPTS["qwen3", "instant"]
    assert show_prompt(models["qwen3"], "-p", "reasoning").stdout == QWEN3_BASE


def test_bad_reasoning_flags_exit_2(models: dict[str, Path]) -> None:
    proc = localllm("run", "-m", str(models["r1"]), "hi", "--reasoning-format", "bogus")
    assert proc.returncode == 2, proc.stderr
    assert "--reasoning-format" in proc.stderr and "Traceback" not in proc.stderr
    proc = localllm("run", "-m", str(models["r1"]), "hi", "--reasoning-budget", "-1")
    assert proc.returncode == 2, proc.stderr
    assert "--reasoning-budget" in proc.stderr


BUDGET_RUN = ("--mode", "reasoning", "--reasoning-budget", "3", "-n", "4", "--temperature", "0")


def test_reasoning_to_stderr_answer_to_stdout(models: dict[str, Path]) -> None:
    model = str(models["r1"])
    data = json.loads(localllm("run", "-m", model, "hi", *BUDGET_RUN, "--json").stdout)
    shown = localllm("run", "-m", model, "hi", *BUDGET_RUN, "--stats")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == data["answer"]
    assert reasoning.DEFAULT_BRIDGE in shown.stderr
    assert data["reasoning"] in shown.stderr
    assert "reasoning 3 tok" in shown.stderr and "answer 4 tok" in shown.stderr
    hidden = localllm("run", "-m", model, "hi", *BUDGET_RUN, "--hide-reasoning")
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stdout == data["answer"]
    assert reasoning.DEFAULT_BRIDGE not in hidden.stderr


def test_json_has_reasoning_and_answer_with_counts_and_times(models: dict[str, Path]) -> None:
    result = runner.invoke(app, ["run", "-m", str(models["r1"]), "hi", *BUDGET_RUN, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["text"] == data["answer"] != ""
    assert data["reasoning"].endswith(reasoning.DEFAULT_BRIDGE)
    assert (data["reasoning_tokens"], data["answer_tokens"]) == (3, 4)
    assert data["reasoning_s"] >= 0 and data["answer_s"] > 0
    assert data["mode"] == "reasoning" and data["adapter"] == "prefill"
    assert data["budget_exhausted"] is True
    assert data["reasoning_leaked"] is False and data["reasoning_truncated"] is False
    assert data["settings"]["reasoning_budget"] == 3
    assert data["stats"]["generated_tokens"] == 7
    assert data["stats"]["stop_reason"] == "length"


@pytest.fixture
def leaky(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every turn emit a think block (grammar is not a CLI option)."""
    original = ChatSession.send

    def send(self: ChatSession, text: str, **kwargs: Any) -> Any:
        grammar = 'root ::= <think> "oops" </think> " Fine."'
        return original(self, text, grammar=grammar, **kwargs)

    monkeypatch.setattr(ChatSession, "send", send)


def test_leak_in_instant_mode_is_noted_once(models: dict[str, Path], leaky: None) -> None:
    args = ["run", "-m", str(models["qwen3"]), "hi", "--mode", "instant", "--temperature", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Fine."
    assert result.stderr.count("reasoned anyway in instant mode") == 1
    assert "oops" in result.stderr
    assert "oops" not in runner.invoke(app, [*args, "--hide-reasoning"]).stderr
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert data["reasoning_leaked"] is True
    assert (data["answer"], data["reasoning"]) == ("Fine.", "oops")
    assert data["reasoning_tokens"] >= 3


def test_unfinished_reasoning_is_noted(models: dict[str, Path]) -> None:
    args = ["run", "-m", str(models["r1"]), "hi", "--mode", "reasoning", "--ctx", "64"]
    result = runner.invoke(app, [*args, "--temperature", "0", "--hide-reasoning"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "still reasoning" in result.stderr


@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_show_reports_the_adapter(models: dict[str, Path], family: str) -> None:
    result = runner.invoke(app, ["show", str(models[family])])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("reasoning"))
    assert ADAPTERS[family] in line
