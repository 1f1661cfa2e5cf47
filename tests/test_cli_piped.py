"""Piped output (``localllm show … | cat``): tables neither wrap nor pad when stdout is not a
terminal, ``$COLUMNS`` is honoured when set, and every listing command has ``--json``. Run as
real subprocesses with stdout on a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localllm import paths


def piped(*args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,  # stdout is a pipe, as in `localllm show MODEL | cat`
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def assert_unpadded(text: str) -> None:
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line == line.rstrip(), f"padded line: {line!r}"


@pytest.fixture
def deep_model(tmp_path: Path, tiny_model: Path) -> Path:
    """The tiny model at a path far longer than 80 columns."""
    folder = tmp_path.joinpath(*(["a-rather-long-folder-name-for-testing"] * 5))
    folder.mkdir(parents=True)
    target = folder / "SmolLM2-135M-Instruct-with-a-very-long-file-name.Q4_1.gguf"
    target.write_bytes(tiny_model.read_bytes())
    assert len(str(target)) > 200
    return target


def test_show_keeps_a_long_path_on_one_line(deep_model: Path) -> None:
    proc = piped("show", str(deep_model))
    lines = proc.stdout.splitlines()
    assert any(line.split() == ["file", str(deep_model)] for line in lines), proc.stdout
    assert_unpadded(proc.stdout)
    assert "\x1b[" not in proc.stdout  # no colour codes in a pipe


def test_show_honours_columns(deep_model: Path) -> None:
    proc = piped("show", str(deep_model), columns=60)
    assert all(len(line) <= 60 for line in proc.stdout.splitlines()), proc.stdout
    assert str(deep_model) not in proc.stdout  # folded at 60 columns
    assert str(deep_model) in "".join(line.split()[-1] for line in proc.stdout.splitlines())
    assert_unpadded(proc.stdout)


def test_show_json(deep_model: Path) -> None:
    data = json.loads(piped("show", str(deep_model), "--json").stdout)
    assert data["path"] == str(deep_model)


def test_list_keeps_long_names_on_one_line(deep_model: Path) -> None:
    name = "a-model-name-" + "x" * 120
    piped("import", str(deep_model), "--name", name)
    proc = piped("list")
    (row,) = [line for line in proc.stdout.splitlines() if name in line]
    assert row.split()[0] == name
    assert_unpadded(proc.stdout)
    rows = json.loads(piped("list", "--json").stdout)
    assert [r["name"] for r in rows] == [name]


def test_profile_list_keeps_whole_descriptions_and_has_json(isolated_home: Path) -> None:
    description = "A profile whose description is long, " + "word " * 40
    folder = paths.profiles_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wordy.yaml").write_text(
        f"name: wordy\ndescription: {description.strip()}\ntemperature: 0.3\n"
    )
    proc = piped("profile", "list")
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("wordy")]
    assert row.endswith(description.strip())
    assert_unpadded(proc.stdout)
    narrow = piped("profile", "list", columns=70)
    assert all(len(line) <= 70 for line in narrow.stdout.splitlines()), narrow.stdout
    records = json.loads(piped("profile", "list", "--json").stdout)
    wordy = next(r for r in records if r["name"] == "wordy")
    assert wordy["description"] == description.strip() and wordy["builtin"] is False
    assert wordy["temperature"] == 0.3 and wordy["error"] is None
    assert any(r["builtin"] for r in records)


def test_json_of_a_path_with_undecodable_bytes(tmp_path: Path, tiny_model: Path) -> None:
    """A file name that is not UTF-8 (a lone surrogate in Python) still gives valid JSON."""
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/m\xff.gguf")
    Path(odd).write_bytes(tiny_model.read_bytes())
    data = json.loads(piped("show", odd, "--json").stdout)
    assert data["path"] == odd


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_to_a_full_disk_is_one_line_and_exit_5() -> None:
    """`localllm profile list --json > out.json` on a full disk: one error line, exit 5 (not
    enough disk space), no traceback."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "localllm", "profile", "list", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the output:"), lines


# -- a reader that goes away (`localllm run "hi" | head -c5`) -------------------------------


def closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``localllm ARGS`` with stdout on a pipe whose reader is already gone, as when
    `head` has read all it wanted: the first write meets a closed pipe, whatever the timing."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", *args],
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    os.close(read_end)
    _, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["run", "--help"],
        ["list", "--json"],
        ["profile", "list"],
        ["show", "{model}", "--json"],
        ["run", "-m", "{model}", "hi", "-n", "64"],
    ],
    ids=" ".join,
)
def test_a_closed_pipe_ends_quietly_with_141(args: list[str], tiny_model: Path) -> None:
    """Like `cat big | head`: no traceback, no error line, exit 141 (128 + SIGPIPE, the
    README's table), not click's exit 1."""
    proc = closed_pipe(*(a.replace("{model}", str(tiny_model)) for a in args))
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_a_closed_pipe_stops_the_generation_at_once(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` stops decoding at the first write that fails: the answer is not generated into
    a pipe nobody reads (one write attempt, not one per token of the 200 asked for)."""
    import errno
    import io

    from localllm.cli import main

    class GoneReader(io.TextIOBase):
        writes = 0

        def write(self, text: str) -> int:
            GoneReader.writes += 1
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdout", GoneReader())
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exc:
        main(["run", "-m", str(tiny_model), "tell a long story", "-n", "200", "--temperature", "1"])
    assert exc.value.code == 141
    assert GoneReader.writes == 1
