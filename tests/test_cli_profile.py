"""`localllm profile ...` through Typer's CliRunner, through main() and as a real subprocess."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from localllm import paths
from localllm.cli import app, main
from localllm.errors import ProfileError
from localllm.profiles import load_profile, profile_to_yaml

REPO = Path(__file__).resolve().parent.parent
BUILTINS = ["creative", "default", "instant", "precise", "reasoning"]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart already


runner = _runner()


def invoke(*args: str):
    return runner.invoke(app, ["profile", *args], catch_exceptions=True)


def profile_error(result) -> ProfileError:
    """The CliRunner bypasses main(): a core error surfaces as result.exception."""
    assert isinstance(result.exception, ProfileError), (result.exception, result.output)
    return result.exception


def write_user(name: str, text: str) -> Path:
    folder = paths.profiles_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["profile", *args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)  # LOCALLLM_HOME comes from the autouse fixture
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "localllm", "profile", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


# ---------------------------------------------------------------------------------------------
# list / show / path


def test_list_builtins_and_user_profiles():
    write_user("precise", "description: my own precise\ntemperature: 0.1\n")
    write_user("mine", "description: just mine\nmode: reasoning\n")
    write_user("broken", "temperature: 9\n")
    result = runner.invoke(app, ["profile", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["name", "source", "mode", "temperature", "description"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert set(rows) == {*BUILTINS, "mine", "broken"}
    assert "built-in" in rows["default"] and "Balanced everyday chat" in rows["default"]
    assert "user, shadows built-in" in rows["precise"] and "0.1" in rows["precise"]
    assert "my own precise" in rows["precise"]
    assert "reasoning" in rows["mine"] and "user" in rows["mine"]
    assert "invalid" in rows["broken"]


def test_list_narrow_terminal_keeps_names_whole():
    write_user("a-rather-long-profile-name", "description: " + "word " * 40 + "\n")
    write_user("default", "temperature: 0.1\n")
    result = runner.invoke(app, ["profile", "list"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()]
    assert sorted(rows) == sorted([*BUILTINS, "a-rather-long-profile-name"])
    assert "user, shadows built-in" in result.stdout
    assert "…" in result.stdout


def test_list_piped_keeps_whole_descriptions():
    long = "word " * 40
    write_user("wordy", f"description: {long}\n")
    result = runner.invoke(app, ["profile", "list"], env={"COLUMNS": ""})
    assert long.strip() in result.stdout


def test_show_prints_resolved_yaml():
    write_user("child", "extends: precise\nseed: 42\n")
    result = invoke("show", "child")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert "extends" not in data
    assert data["name"] == "child" and data["seed"] == 42 and data["temperature"] == 0.2
    assert result.stdout == profile_to_yaml(load_profile("child"))


def test_show_defaults_to_default():
    result = invoke("show")
    assert yaml.safe_load(result.stdout)["name"] == "default"


def test_show_unknown():
    exc = profile_error(invoke("show", "nope"))
    assert "no profile named 'nope'" in exc.message
    assert "precise" in (exc.hint or "")


def test_show_invalid_names_file_line_field():
    path = write_user("bad", "temperature: 0.5\ntop_k: many\n")
    exc = profile_error(invoke("show", "bad"))
    assert exc.message.startswith(f"{path}:2: top_k: ")


def test_path():
    result = invoke("path")
    assert result.stdout.strip() == str(paths.profiles_dir())
    assert Path(invoke("path", "precise").stdout.strip()).name == "precise.yaml"
    mine = write_user("precise", "temperature: 0.1\n")
    assert invoke("path", "precise").stdout.strip() == str(mine)
    profile_error(invoke("path", "nope"))


# ---------------------------------------------------------------------------------------------
# new


def test_new_copies_default():
    result = invoke("new", "fast")
    assert result.exit_code == 0, result.output
    target = paths.profiles_dir() / "fast.yaml"
    assert result.stdout.strip() == str(target)
    assert target.read_text().startswith("# fast: created from 'default'")
    assert load_profile("fast") == replace(load_profile("default"), name="fast")


def test_new_from_and_force():
    assert invoke("new", "think", "--from", "reasoning").exit_code == 0
    assert load_profile("think").mode == "reasoning"
    exc = profile_error(invoke("new", "think", "--from", "creative"))
    assert "already exists" in exc.message and "--force" in (exc.hint or "")
    assert load_profile("think").mode == "reasoning"
    assert invoke("new", "think", "--from", "creative", "--force").exit_code == 0
    assert load_profile("think").temperature == load_profile("creative").temperature


def test_new_shadowing_builtin_notes_it():
    result = invoke("new", "precise", "--from", "creative")
    assert result.exit_code == 0
    assert "shadows the built-in" in result.stderr


@pytest.mark.parametrize("name", ["-bad", "a b", "../x", ".hidden", "x/y", "é"])
def test_new_rejects_bad_names(name):
    result = runner.invoke(app, ["profile", "new", "--", name])
    assert isinstance(result.exception, ProfileError), result.output
    assert not paths.profiles_dir().exists() or not list(paths.profiles_dir().iterdir())


def test_new_from_unknown():
    assert (
        "no profile named 'ghost'" in profile_error(invoke("new", "x", "--from", "ghost")).message
    )


def test_new_from_invalid_source():
    write_user("broken", "min_p: 3\n")
    exc = profile_error(invoke("new", "x", "--from", "broken"))
    assert "min_p" in exc.message
    assert not (paths.profiles_dir() / "x.yaml").exists()


# ---------------------------------------------------------------------------------------------
# edit


@pytest.fixture
def fake_editor(tmp_path, monkeypatch):
    """Set $EDITOR to a script that records the draft it got and writes ``text`` over it."""

    def make(text: str | None, exit_code: int = 0, variable: str = "EDITOR") -> Path:
        seen = tmp_path / f"seen-{variable}.txt"
        script = tmp_path / f"editor-{variable}.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import pathlib, sys
                draft = pathlib.Path(sys.argv[-1])
                pathlib.Path({str(seen)!r}).write_text(draft.read_text() + "\\n@" + str(draft))
                text = {text!r}
                if text is not None:
                    draft.write_text(text)
                sys.exit({exit_code})
                """
            )
        )
        monkeypatch.setenv(variable, f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")
        return seen

    return make


def test_edit_valid_saves(fake_editor):
    path = write_user("mine", "temperature: 0.5\n")
    seen = fake_editor("# edited\ntemperature: 0.9\n")
    result = invoke("edit", "mine")
    assert result.exit_code == 0, result.output
    assert path.read_text() == "# edited\ntemperature: 0.9\n"
    assert seen.read_text().startswith("temperature: 0.5\n")
    draft = Path(seen.read_text().split("\n@")[1])
    assert draft != path and not draft.exists()  # edited a temp copy, cleaned up


def test_edit_invalid_keeps_old_file(fake_editor):
    path = write_user("mine", "temperature: 0.5\n")
    seen = fake_editor("temperature: 0.5\ntemprature: 0.9\n")
    exc = profile_error(invoke("edit", "mine"))
    assert "did you mean `temperature`?" in exc.message
    assert ":2: unknown key `temprature`" in exc.message
    assert "was not changed" in exc.message
    assert path.read_text() == "temperature: 0.5\n"
    draft = Path(seen.read_text().split("\n@")[1])
    assert str(draft) in (exc.hint or "") and draft.read_text().endswith("temprature: 0.9\n")


def test_edit_invalid_yaml_exit_code_via_main(fake_editor, capsys):
    path = write_user("mine", "temperature: 0.5\n")
    fake_editor("temperature: [0.5\n")
    code, _out, err = run_main(capsys, "edit", "mine")
    assert code == 2
    assert err.startswith("error: ") and "invalid YAML" in err and "Traceback" not in err
    assert path.read_text() == "temperature: 0.5\n"


def test_edit_builtin_creates_user_copy(fake_editor):
    seen = fake_editor("extends: precise\nseed: 1\n")
    result = invoke("edit", "precise")
    assert result.exit_code == 0, result.output
    assert "# precise: your copy of the built-in" in seen.read_text()
    assert "top_p: 0.8" in seen.read_text()  # the built-in's text, comments and all
    assert "shadows the built-in" in result.stderr
    profile = load_profile("precise")
    assert profile.seed == 1 and profile.temperature == 0.2  # extends the built-in it shadows
    assert (paths.profiles_dir() / "precise.yaml").is_file()


def test_edit_builtin_without_changes_writes_nothing(fake_editor):
    fake_editor(None)
    result = invoke("edit", "creative")
    assert result.exit_code == 0
    assert "no changes" in result.stderr
    assert not (paths.profiles_dir() / "creative.yaml").exists()


def test_edit_builtin_invalid_creates_nothing(fake_editor):
    fake_editor("temperature: 3\n")
    exc = profile_error(invoke("edit", "creative"))
    assert "temperature: must be between 0 and 2" in exc.message
    assert not (paths.profiles_dir() / "creative.yaml").exists()


def test_edit_name_mismatch_rejected(fake_editor):
    path = write_user("mine", "temperature: 0.5\n")
    fake_editor("name: other\n")
    assert "does not match" in profile_error(invoke("edit", "mine")).message
    assert path.read_text() == "temperature: 0.5\n"


def test_edit_editor_failure_keeps_file(fake_editor):
    path = write_user("mine", "temperature: 0.5\n")
    fake_editor("temperature: 0.6\n", exit_code=3)
    exc = profile_error(invoke("edit", "mine"))
    assert "status 3" in exc.message
    assert path.read_text() == "temperature: 0.5\n"


def test_edit_prefers_visual(fake_editor, monkeypatch):
    write_user("mine", "temperature: 0.5\n")
    fake_editor("temperature: 0.1\n", variable="VISUAL")
    monkeypatch.setenv("EDITOR", "false")
    assert invoke("edit", "mine").exit_code == 0
    assert load_profile("mine").temperature == 0.1


def test_edit_unknown_profile(fake_editor):
    fake_editor("temperature: 0.1\n")
    assert "no profile named 'ghost'" in profile_error(invoke("edit", "ghost")).message


def test_edit_missing_editor(monkeypatch):
    write_user("mine", "temperature: 0.5\n")
    monkeypatch.setenv("EDITOR", "/nonexistent/editor-binary")
    exc = profile_error(invoke("edit", "mine"))
    assert "cannot start the editor" in exc.message


def test_editor_fallback(monkeypatch):
    import shutil

    from localllm.cli import profile as cli_profile

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/vi" if name == "vi" else None)
    assert cli_profile._editor_command() == ["/usr/bin/vi"]
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ProfileError, match="no text editor"):
        cli_profile._editor_command()
    monkeypatch.setenv("EDITOR", "code --wait")
    assert cli_profile._editor_command() == ["code", "--wait"]


def test_edit_without_an_editor_or_a_terminal_says_so():
    """No $VISUAL/$EDITOR and no terminal (a script, a pipe): the fallback vi or nano would
    garble the output and fail; one error line instead, exit 2, nothing started."""
    write_user("mine", "temperature: 0.5\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VISUAL", "EDITOR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", "profile", "edit", "mine"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no $VISUAL or $EDITOR is set")
    assert "localllm profile path mine" in lines[0] and proc.stdout == ""


def test_a_group_without_its_command_shows_its_help():
    """`localllm profile` (and `localllm`) alone: the group's help, not "error: Usage: …"."""
    proc = run_cli()
    assert proc.returncode == 2
    assert proc.stderr.startswith("Usage: localllm profile [OPTIONS] COMMAND")
    assert "error" not in proc.stderr and "see 'localllm" not in proc.stderr
    assert "validate" in proc.stderr


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_without_user_profiles():
    result = invoke("validate")
    assert result.exit_code == 0
    assert "no user profiles" in result.stderr


def test_validate_all_user_profiles():
    write_user("good", "temperature: 0.3\n")
    write_user("also-good", "extends: reasoning\n")
    result = invoke("validate")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["ok also-good", "ok good"]


def test_validate_reports_each_invalid_and_exits_2():
    write_user("good", "temperature: 0.3\n")
    bad = write_user("bad", "temperature: hot\n")
    typo = write_user("typo", "top_pp: 0.3\n")
    result = invoke("validate")
    assert "2 of 3 profiles are invalid" in profile_error(result).message
    assert result.stdout.splitlines() == ["ok good"]
    assert f"error: {bad}:1: temperature: " in result.stderr
    assert f"error: {typo}:1: unknown key `top_pp`: did you mean `top_p`?" in result.stderr


def test_validate_names_and_paths(tmp_path):
    loose = tmp_path / "loose.yaml"
    loose.write_text("mode: reasoning\n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("mode: thinking\n")
    result = invoke("validate", "precise", str(loose))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["ok precise", f"ok {loose}"]
    result = invoke("validate", str(wrong), "nope", "default")
    assert "2 of 3 profiles are invalid" in profile_error(result).message
    assert result.stdout.splitlines() == ["ok default"]
    assert f"{wrong}:1: mode: must be one of instant, reasoning" in result.stderr
    assert "no profile named 'nope'" in result.stderr


def test_validate_exit_code_via_main(capsys):
    write_user("bad", "seed: -3\n")
    code, out, err = run_main(capsys, "validate")
    assert code == 2 and out == "" and "seed: must be between 0 and" in err
    assert err.splitlines()[-1].startswith("error: 1 of 1 profiles are invalid")


# ---------------------------------------------------------------------------------------------
# Real subprocess: exit codes and stderr through main()


def test_subprocess_list_ok():
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    for name in BUILTINS:
        assert name in proc.stdout


def test_subprocess_show_unknown_exits_2():
    proc = run_cli("show", "nope")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no profile named 'nope'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_subprocess_invalid_profile_exits_2():
    path = write_user("bad", "temperature: 0.5\nmode: fast\n")
    proc = run_cli("show", "bad")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: {path}:2: mode: must be one of")
    assert "Traceback" not in proc.stderr


def test_subprocess_validate_and_new():
    write_user("ok1", "temperature: 0.3\n")
    write_user("bad", "temprature: 0.3\n")
    proc = run_cli("validate")
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == ["ok ok1"]
    assert "did you mean `temperature`?" in proc.stderr
    proc = run_cli("new", "ok1")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = run_cli("new", "bad name")
    assert proc.returncode == 2 and "not a valid profile name" in proc.stderr


def test_a_directory_is_not_called_a_missing_file(tmp_path):
    """`localllm profile validate ./profiles/` names the folder as a folder, not as missing."""
    result = invoke("validate", str(tmp_path))
    assert "1 of 1 profiles are invalid" in profile_error(result).message
    assert "is a directory" in result.stderr and "no such" not in result.stderr
    with pytest.raises(ProfileError, match="is a directory"):
        load_profile(str(tmp_path) + "/")
