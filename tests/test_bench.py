"""``localllm bench`` on the tiny generated model: the core's figures, the table, the JSON
schema and the exit codes. No timing assertions: only shapes and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localllm.bench import BenchConfig, Measurement, format_table, run_bench
from localllm.cli import app, main
from localllm.errors import UsageError

runner = CliRunner()
SMALL = ["-p", "16", "-n", "8", "-r", "2", "--threads", "1"]


def exit_code(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_run_bench_measures_pp_tg_ttft_and_e2e(tiny_model: Path) -> None:
    result = run_bench(tiny_model, BenchConfig(n_prompt=16, n_gen=8, repetitions=2, threads=1))
    names = [t.test for t in result.tests]
    assert names[:4] == ["pp16", "tg8", "ttft p16+n8", "e2e p16+n8"]
    assert names[4:] in ([], ["tg8 @ d16"])  # the decode rate, when the model made 2+ tokens
    pp, tg, ttft, e2e = result.tests[:4]
    for t in result.tests[:4]:
        assert len(t.seconds) == 2 and len(t.samples) == 2
        assert all(s > 0 for s in t.seconds)
        assert t.mean > 0 and t.stdev >= 0
    assert pp.tokens == [16, 16] and tg.tokens == [8, 8]
    assert ttft.unit == "ms" and ttft.tokens == [16, 16]
    assert all(0 < n <= 8 for n in e2e.tokens)
    assert result.threads == 1 and result.backend == "CPU" and result.n_gpu_layers == 0
    assert result.n_ctx >= 16 + 8


def test_skipping_tests(tiny_model: Path) -> None:
    only_pp = run_bench(tiny_model, BenchConfig(n_prompt=8, n_gen=0, repetitions=1, threads=1))
    assert [t.test for t in only_pp.tests] == ["pp8"]
    only_tg = run_bench(
        tiny_model, BenchConfig(n_prompt=0, n_gen=4, repetitions=1, threads=1, e2e=False)
    )
    assert [t.test for t in only_tg.tests] == ["tg4"]


def test_measurement_statistics() -> None:
    m = Measurement("pp4", 4, 0, seconds=[1.0, 0.5, 0.25], tokens=[4, 4, 4])
    assert m.samples == [4.0, 8.0, 16.0]
    assert m.mean == pytest.approx(28 / 3)
    assert m.stdev == pytest.approx(6.110100926607787)
    single = Measurement("tg1", 0, 1, seconds=[0.5], tokens=[1])
    assert single.stdev == 0.0
    assert Measurement("ttft", 1, 0, seconds=[0.02], tokens=[1], unit="ms").samples == [20.0]


@pytest.mark.parametrize(
    "config",
    [
        BenchConfig(n_prompt=-1),
        BenchConfig(n_gen=-5),
        BenchConfig(repetitions=0),
        BenchConfig(threads=0),
        BenchConfig(n_batch=0),
        BenchConfig(n_ubatch=0),
        BenchConfig(n_prompt=0, n_gen=0),
        BenchConfig(kv_cache_type="q3"),
        BenchConfig(kv_cache_type="q8_0", flash_attn=False),
    ],
)
def test_bad_numbers_are_usage_errors(config: BenchConfig) -> None:
    with pytest.raises(UsageError):
        config.validate()


def test_cli_table(tiny_model: Path) -> None:
    result = runner.invoke(app, ["bench", str(tiny_model), *SMALL])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| model") and "t/s" in lines[0]
    assert set(lines[1]) <= {"|", "-", ":", " "}
    body = lines[2:]
    assert [line.split("|")[7].strip() for line in body][:4] == [
        "pp16",
        "tg8",
        "ttft p16+n8",
        "e2e p16+n8",
    ]
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 8
        assert cells[0].startswith("llama ")
        assert cells[3] == "CPU" and cells[5] == "1"
        assert "±" in cells[7]
    assert "ms" in body[2]


def test_cli_json_schema(tiny_model: Path) -> None:
    result = runner.invoke(app, ["bench", str(tiny_model), *SMALL, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {
        "model",
        "backend",
        "n_gpu_layers",
        "offload",
        "threads",
        "n_batch",
        "n_ubatch",
        "flash_attn",
        "kv_cache_type",
        "n_ctx",
        "repetitions",
        "results",
    }
    assert set(data["model"]) >= {
        "path",
        "name",
        "architecture",
        "size_bytes",
        "parameters",
        "quantization",
        "type",
    }
    assert data["repetitions"] == 2 and data["threads"] == 1
    tests = {r["test"]: r for r in data["results"]}
    assert set(tests) - {"tg8 @ d16"} == {"pp16", "tg8", "ttft p16+n8", "e2e p16+n8"}
    for r in tests.values():
        assert set(r) == {
            "test",
            "n_prompt",
            "n_gen",
            "unit",
            "mean",
            "stdev",
            "samples",
            "seconds",
            "tokens",
        }
        assert len(r["samples"]) == len(r["seconds"]) == len(r["tokens"])
        assert 1 <= len(r["samples"]) <= 2
    assert len(tests["pp16"]["samples"]) == 2
    assert tests["pp16"]["n_prompt"] == 16 and tests["tg8"]["n_gen"] == 8
    assert tests["ttft p16+n8"]["unit"] == "ms"


def test_batch_options_reach_the_engine(tiny_model: Path) -> None:
    args = ["bench", str(tiny_model), "-p", "8", "-n", "0", "-r", "1", "-b", "4", "-ub", "2"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_batch"] == 4 and data["n_ubatch"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ["-r", "0"],
        ["-p", "-1"],
        ["-n", "-2"],
        ["--threads", "0"],
        ["-p", "0", "-n", "0"],
        ["--batch", "0"],
        ["--gpu-layers", "lots"],
        ["--kv-cache-type", "q8_0", "--no-flash-attn"],
        ["-p", "many"],
    ],
)
def test_bad_numbers_exit_2(
    tiny_model: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = exit_code(["bench", str(tiny_model), *args], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_bad_numbers_exit_2_before_the_model_is_looked_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, _ = exit_code(["bench", "no-such-model.gguf", "-r", "0"], capsys)
    assert code == 2


def test_missing_model_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = exit_code(["bench", str(tmp_path / "nope.gguf"), "-r", "1"], capsys)
    assert code == 3 and out == ""
    assert "nope.gguf" in err
    code, _, _ = exit_code(["bench", "not-installed", "-r", "1"], capsys)
    assert code == 3


def test_garbage_model_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    code, out, err = exit_code(["bench", str(bad), "-r", "1", "-p", "4", "-n", "2"], capsys)
    assert code == 3 and out == ""
    assert err.startswith("error:")


def test_format_table_aligns_columns(tiny_model: Path) -> None:
    result = run_bench(
        tiny_model, BenchConfig(n_prompt=8, n_gen=4, repetitions=1, threads=1, e2e=False)
    )
    lines = format_table(result).splitlines()
    assert len({len(line) for line in lines}) == 1


def test_plain_options_are_parsed_without_pydantic(tiny_model: Path) -> None:
    """Typer's pydantic-based conversion costs ~0.15 s per command: plain options skip it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from localllm.cli import main\n"
        "try:\n"
        f"    main(['bench', {str(tiny_model)!r}, '-p', '4', '-n', '2', '-r', '1', '-t', '1',"
        " '--no-e2e', '--no-flash-attn', '--kv-cache-type', 'f16'])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print('pydantic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-2:] == ["exit 0", "False"], out.stdout + out.stderr
