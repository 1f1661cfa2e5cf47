"""``localllm run``: one prompt in, a streamed answer out.

The answer alone goes to stdout so it pipes cleanly; progress, warnings and stats go to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from localllm.cli import _app
from localllm.cli._app import (
    app,
    complete_mode,
    complete_model,
    complete_profile,
    complete_reasoning_format,
    err,
)

if TYPE_CHECKING:
    from localllm.textin import TextInputs

GPU_LAYERS_HELP = "Layers to offload to the GPU: a number, 0 for none, or auto."
RPC_HELP = (
    "Split the model across llama.cpp RPC workers (`localllm worker` on each host): "
    "HOST:PORT[,HOST:PORT...]."
)


def prepare_rpc(settings: Any) -> None:
    """With workers in the profile or ``--rpc``, make sure an RPC-enabled llama.cpp is the one
    that loads (before anything loads the bindings): a clear exit 2 otherwise."""
    if getattr(settings, "rpc", ()):
        from localllm.rpc import select_rpc_library

        select_rpc_library()


def rpc_split_line(engine: Any) -> str | None:
    """``split: CPU 10 layers 40 MiB · 127.0.0.1:50052 ...`` for an engine loaded with
    workers, else None."""
    if not getattr(engine.options, "rpc", ()):
        return None
    from localllm import rpc

    return rpc.split_summary(rpc.engine_split(engine)) or None


def read_stdin(inputs: TextInputs) -> str:
    """All of stdin as text: its bytes decoded as UTF-8 (invalid bytes become U+FFFD)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a replaced sys.stdin without bytes
        return inputs.text(sys.stdin.read(), "stdin")
    text = inputs.data(buffer.read(), "stdin")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text-mode stdin reads it


def read_prompt(
    prompt: str | None, inputs: TextInputs | None = None, *, stdin_taken: bool = False
) -> str:
    """The prompt from the argument and/or stdin.

    PROMPT omitted or ``-``: stdin is the prompt. Both given: stdin is attached as context
    (unless an image was read from it: ``stdin_taken``).
    """
    from localllm.errors import UsageError
    from localllm.textin import TextInputs

    inputs = inputs if inputs is not None else TextInputs()
    stdin_text = ""
    if stdin_taken:
        text = inputs.text(prompt or "", "the prompt argument")
    elif prompt in (None, "-"):
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(
                "no prompt given", hint='pass one: localllm run "your question", or pipe text in'
            )
        stdin_text = read_stdin(inputs)
        text = stdin_text
    else:
        prompt = inputs.text(prompt, "the prompt argument")
        if sys.stdin is not None and not sys.stdin.isatty():
            stdin_text = read_stdin(inputs)
        text = prompt if not stdin_text.strip() else f"{prompt}\n\n{stdin_text}"
    if not text.strip():
        raise UsageError("the prompt is empty", hint="give a prompt or pipe text on stdin")
    return text


def read_images(refs: list[str] | None, prompt: str | None, allow_remote: bool) -> list[Any]:
    """The ``--image`` files; ``-`` reads one image's bytes from stdin (the prompt must then
    be an argument)."""
    if not refs:
        return []
    from localllm import images
    from localllm.errors import UsageError

    stdin_bytes = None
    if "-" in refs:
        if refs.count("-") > 1:
            raise UsageError("only one --image can read stdin")
        if prompt in (None, "-"):
            raise UsageError(
                "--image - reads the image from stdin, so the prompt must be an argument",
                hint='localllm run --image - "Describe this" < picture.png',
            )
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("--image - needs the image piped in", hint="... < picture.png")
        stdin_bytes = sys.stdin.buffer.read()
    return [images.read_image(r, stdin=stdin_bytes, allow_remote=allow_remote) for r in refs]


def open_projector(engine: Any, mmproj: str | None, path: Path, verbose: bool) -> Any:
    """The projector for a vision request: ``--mmproj FILE``, else the one beside the model;
    a text-only model is refused by name."""
    from localllm import vision
    from localllm.errors import UsageError

    found = Path(mmproj).expanduser() if mmproj else vision.find_projector(path)
    if found is None:
        raise UsageError(
            f"{path.name} is a text-only model: it cannot read images (no mmproj projector "
            "beside it)",
            hint="use a vision model (e.g. one published with an mmproj-*.gguf), "
            "or give its projector with --mmproj FILE",
        )
    return vision.Projector(engine, found, verbose=verbose)


def read_template_file(path: Path | None, inputs: TextInputs | None = None) -> str | None:
    from localllm.errors import UsageError
    from localllm.textin import TextInputs

    if path is None:
        return None
    inputs = inputs if inputs is not None else TextInputs()
    try:
        return inputs.data(path.read_bytes(), str(path))
    except OSError as exc:
        raise UsageError(
            f"cannot read the template file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc


def parse_gpu_layers(value: str | None) -> int | str | None:
    from localllm.errors import UsageError

    if value is None or value == "auto":
        return value
    try:
        layers = int(value)
    except ValueError:
        layers = -1
    if layers < 0:
        raise UsageError(f"--gpu-layers must be a number ≥ 0 or 'auto', not '{value}'")
    return layers


@app.command()
def run(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt; omit or '-' to read stdin.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A .gguf path or an installed model.",
            autocompletion=complete_model,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="Profile name.", autocompletion=complete_profile),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (0 = greedy).")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Sample from the k likeliest.")
    ] = None,
    min_p: Annotated[
        float | None, typer.Option("--min-p", help="Drop tokens below p × best.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")
    ] = None,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="Stop sequence (repeatable).", metavar="TEXT")
    ] = None,
    frequency_penalty: Annotated[float | None, typer.Option("--frequency-penalty")] = None,
    presence_penalty: Annotated[float | None, typer.Option("--presence-penalty")] = None,
    repeat_penalty: Annotated[float | None, typer.Option("--repeat-penalty")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    ctx: Annotated[int | None, typer.Option("--ctx", help="Context length in tokens.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads.")] = None,
    gpu_layers: Annotated[str | None, typer.Option("--gpu-layers", help=GPU_LAYERS_HELP)] = None,
    rpc: Annotated[
        str | None, typer.Option("--rpc", help=RPC_HELP, metavar="HOST:PORT,...")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="reasoning or instant.", autocompletion=complete_mode)
    ] = None,
    show_reasoning: Annotated[
        bool | None,
        typer.Option(
            "--show-reasoning/--hide-reasoning",
            help="Stream the model's reasoning, dimmed, to stderr (or hide it).",
            show_default=False,
        ),
    ] = None,
    reasoning_budget: Annotated[
        int | None,
        typer.Option(
            "--reasoning-budget",
            help="Most reasoning tokens before the model must answer (0 = instant).",
        ),
    ] = None,
    reasoning_format: Annotated[
        str | None,
        typer.Option(
            "--reasoning-format",
            help="Force how thinking is switched: auto, enable_thinking, thinking, prefill, "
            "harmony, instruction or none.",
            autocompletion=complete_reasoning_format,
        ),
    ] = None,
    template_file: Annotated[
        Path | None,
        typer.Option(
            "--template-file",
            help="A Jinja chat template to use instead of the model's own.",
            show_default=False,
        ),
    ] = None,
    json_schema: Annotated[
        str | None,
        typer.Option(
            "--json-schema",
            help="Make the answer JSON valid against this schema (a file or inline JSON).",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option("--format", help="json: make the answer a JSON object.", show_default=False),
    ] = None,
    grammar_file: Annotated[
        Path | None,
        typer.Option(
            "--grammar", help="Constrain the answer with a GBNF grammar file.", show_default=False
        ),
    ] = None,
    speculative: Annotated[
        str | None,
        typer.Option(
            "--speculative",
            help="Draft tokens by looking the answer up in the prompt: off, ngram, or auto "
            "(long prompts only).",
        ),
    ] = None,
    draft_model: Annotated[
        str | None,
        typer.Option(
            "--draft-model",
            help="A small model with the same vocabulary that drafts tokens for this one.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    show_prompt: Annotated[
        bool, typer.Option("--show-prompt", help="Print the rendered prompt and stop.")
    ] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Print speed figures to stderr.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Load even if the model looks too big for memory.")
    ] = False,
    verbose: Annotated[
        bool | None, typer.Option("--verbose", "-v", help="Show llama.cpp's logs.")
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            "-i",
            metavar="FILE",
            help="An image for a vision model (PNG, JPEG, GIF, BMP; repeatable; - reads stdin).",
            show_default=False,
        ),
    ] = None,
    mmproj: Annotated[
        str | None,
        typer.Option(
            "--mmproj",
            help="The vision projector (mmproj .gguf); default: the one beside the model.",
            show_default=False,
        ),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow http(s) URLs as --image.")
    ] = False,
) -> None:
    """Answer one prompt, streaming the answer to stdout."""
    from localllm import profiles
    from localllm.loading import model_to_generate, need_tokens_for, open_engine
    from localllm.textin import TextInputs

    inputs = TextInputs()  # every text input, decoded once: invalid UTF-8 becomes U+FFFD
    system = inputs.optional(system, "--system")
    stop = inputs.texts(stop, "--stop") if stop else None
    overrides: dict[str, Any] = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "max_tokens": max_tokens,
        "stop": list(stop) if stop else None,
        "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty,
        "repeat_penalty": repeat_penalty,
        "seed": seed,
        "system_prompt": system,
        "context_length": ctx,
        "threads": threads,
        "gpu_layers": parse_gpu_layers(gpu_layers),
        "rpc": rpc,
        "mode": mode,
        "show_reasoning": show_reasoning,
        "reasoning_budget": reasoning_budget,
        "reasoning_format": reasoning_format,
        "chat_template": read_template_file(template_file, inputs),
        "verbose": verbose,
        "speculative": speculative,
        "draft_model": draft_model,
    }
    settings = profiles.resolve(profile, overrides)
    settings = clean_profile_text(settings, inputs)
    prepare_rpc(settings)
    constraint_args = constraint_options(json_schema, output_format, grammar_file, settings)
    pictures = read_images(image, prompt, allow_remote)
    text = read_prompt(prompt, inputs, stdin_taken="-" in (image or ()))
    if (warning := inputs.warning()) is not None:
        err(warning)
    interactive = sys.stderr.isatty()

    def say(message: str) -> None:
        err(message, style="dim")

    path = model_to_generate(model or settings.model, say)
    if pictures and mmproj is None:
        from localllm import vision

        if vision.find_projector(path) is None:  # refuse before loading the model
            open_projector(None, None, path, False)
    if interactive and not as_json:
        say(f"loading {path.name}…")
    # a one-shot context sized from the prompt (images take tokens their bytes do not tell)
    need = None if show_prompt or pictures else need_tokens_for(text, settings)
    engine = open_engine(
        path, settings, vocab_only=show_prompt, force=force, warn=err, need_tokens=need
    )
    projector = None
    try:
        if pictures and not show_prompt:
            projector = open_projector(engine, mmproj, path, bool(settings.verbose))
        from localllm.session import ChatSession  # imported while the model loaded

        session = ChatSession(engine, settings, projector=projector)
        if not session.is_chat and not as_json:
            err(
                "note: this is a base model (no chat template): completing the prompt as plain text"
            )
        if show_prompt:
            rendered = session.render(text)
            sys.stdout.write(rendered)
            sys.stdout.flush()
            err(
                f"{len(engine.tokenize(rendered))} prompt tokens · mode: {session.mode} · "
                f"reasoning adapter: {session.adapter}"
            )
            return
        from localllm.session import make_constraint

        constraint = make_constraint(**constraint_args) if constraint_args else None
        _stream(
            session,
            text,
            as_json=as_json,
            show_stats=stats,
            path=path,
            images=pictures,
            constraint=constraint,
        )
    finally:
        if projector is not None:
            projector.close()
        abandon = getattr(engine, "abandon", None)  # in-process engines (a child must stop)
        if _app.PROCESS_ENDS_AFTER and abandon is not None:
            abandon()
        else:
            engine.close()


def clean_profile_text(settings: Any, inputs: TextInputs) -> Any:
    """The resolved profile with its text fields (system prompt, stops) free of lone
    surrogates, which a YAML escape such as "\\udcff" can put there."""
    source = f"the system_prompt of profile '{settings.name}'"
    system = inputs.optional(settings.system_prompt, source)
    stop = tuple(inputs.texts(settings.stop, f"the stop of profile '{settings.name}'"))
    if system == settings.system_prompt and stop == tuple(settings.stop):
        return settings
    return settings.replace(system_prompt=system, stop=stop)


def constraint_options(
    json_schema: str | None, output_format: str | None, grammar_file: Path | None, settings: Any
) -> dict[str, Any]:
    """What constrains the answer, checked before the model loads: the flags, else the
    profile's ``json_schema`` or ``grammar``. Arguments for ``session.make_constraint``."""
    from localllm.errors import UsageError

    if output_format is not None and output_format != "json":
        raise UsageError(f"--format must be 'json', not {output_format!r}")
    flags = [
        f
        for f, v in (
            ("--json-schema", json_schema),
            ("--format", output_format),
            ("--grammar", grammar_file),
        )
        if v is not None
    ]
    if len(flags) > 1:
        raise UsageError(
            f"{' and '.join(flags)} cannot be used together",
            hint="a schema already makes the answer JSON; a grammar replaces both",
        )
    if json_schema is not None:
        from localllm import structured  # imported only when a flag needs it

        schema, source = structured.read_schema_arg(json_schema)
        return {"json_schema": schema, "source": source}
    if output_format == "json":
        return {"json_format": True}
    if grammar_file is not None:
        from localllm import structured

        return {
            "grammar": structured.read_grammar_file(str(grammar_file)),
            "source": str(grammar_file),
        }
    if settings.json_schema is not None:
        return {"json_schema": settings.json_schema, "source": f"profile {settings.name}"}
    if settings.grammar is not None:
        return {"grammar": settings.grammar, "source": f"profile {settings.name}"}
    return {}


FLUSH_EVERY = 0.05  # seconds between flushes of an answer streamed to a pipe or a file


def _stream(
    session: Any,
    text: str,
    *,
    as_json: bool,
    show_stats: bool,
    path: Path,
    images: list[Any] | None = None,
    constraint: Any = None,
) -> None:
    from dataclasses import asdict

    from localllm.errors import EXIT_INTERRUPTED, LocalLLMError
    from localllm.session import AnswerText, ReasoningText

    settings = session.profile
    out = sys.stdout
    show_reasoning = settings.show_reasoning and not as_json
    reasoning_shown = False  # reasoning is on stderr and not yet ended by a newline
    # A terminal gets every token as it comes; a pipe or file gets the text at most every
    # FLUSH_EVERY seconds (and at the end), not a write call per token.
    every = 0.0 if out.isatty() else FLUSH_EVERY
    flushed = -every
    clock = time.monotonic
    events = session.send(text, images=images or (), constraint=constraint)
    midline = False  # an answer on a terminal, not yet ended by a newline
    try:
        for event in events:
            if isinstance(event, AnswerText):
                if reasoning_shown:
                    sys.stderr.write("\n")
                    sys.stderr.flush()
                    reasoning_shown = False
                if not as_json:
                    out.write(event.text)
                    if event.text:
                        midline = not every and not event.text.endswith("\n")
                    if not every:
                        out.flush()
                    elif (now := clock()) - flushed >= every:
                        out.flush()
                        flushed = now
            elif isinstance(event, ReasoningText) and show_reasoning:
                sys.stderr.write(_dim(event.text))
                sys.stderr.flush()
                reasoning_shown = True
    except KeyboardInterrupt:
        if not as_json:
            out.write("\n")
            out.flush()
        err("interrupted: stopped generating")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except LocalLLMError:  # on a terminal, the error line gets a line of its own
        if midline:
            out.write("\n")
            out.flush()
        elif reasoning_shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
        raise
    finally:
        # A closed stdout (`| head -c5`) raises from a write above: the turn's generator is
        # closed there and then, so decoding stops at once (not when it is collected, and
        # never after the engine under it was closed).
        events.close()
    if reasoning_shown:
        sys.stderr.write("\n")
        sys.stderr.flush()
    turn = session.last_turn
    final = turn.stats
    parsed, problem = _check_constrained(turn, constraint, settings.max_tokens)
    if as_json:
        settings_dict = {k: v for k, v in asdict(settings).items() if k != "extra"}
        settings_dict["stop"] = list(settings.stop)
        payload = {
            "model": str(path),
            **_image_fields(session, images),
            "text": turn.answer,
            "answer": turn.answer,
            "reasoning": turn.reasoning,
            **turn.parts_dict(),
            **({"parsed": parsed} if constraint is not None and constraint.is_json else {}),
            "settings": settings_dict,
            "stats": final.as_dict() if final else None,
        }
        out.write(json.dumps(payload, ensure_ascii=False) + "\n")
    elif turn.answer and not turn.answer.endswith("\n") and out.isatty():
        out.write("\n")
    out.flush()
    if not as_json:
        for note in reasoning_notes(turn):
            err(note)
    if show_stats and final is not None:
        split = ""
        if turn.reasoning_tokens:
            split = (
                f" (reasoning {turn.reasoning_tokens} tok in {turn.reasoning_s:.1f} s, "
                f"answer {turn.answer_tokens} tok in {turn.answer_s:.1f} s)"
            )
        err(
            f"prompt {final.prompt_tokens} tok ({final.cached_tokens} cached) · "
            f"generated {final.generated_tokens} tok{split} · "
            f"TTFT {final.ttft_s * 1000:.0f} ms · "
            f"{final.tokens_per_s:.1f} tok/s · stop: {final.stop_reason}"
            + (
                f" · drafted {final.drafted_tokens}, accepted {final.accepted_tokens}"
                if final.drafted_tokens
                else ""
            )
        )
        if images:
            pre = session.projector.stats
            err(
                f"images {pre.images} · {pre.image_tokens} image tok in the prompt "
                f"({pre.text_tokens} text tok) · encoded {pre.encoded} in "
                f"{pre.encode_s * 1000:.0f} ms"
            )
        opts = session.engine.options
        err(
            f"{opts.offload_summary} · {opts.n_threads} threads · ctx {opts.n_ctx} · "
            f"KV {opts.kv_cache_type} · flash attention "
            f"{'auto' if opts.flash_attn is None else 'on' if opts.flash_attn else 'off'}"
        )
        if (split := rpc_split_line(session.engine)) is not None:
            err(split)
        if settings.verbose:
            phases = getattr(session.engine, "load_phases", [])
            err("load: " + " · ".join(f"{name} {s * 1000:.0f} ms" for name, s in phases))
    if problem is not None:
        from localllm.errors import InferenceError

        raise problem if isinstance(problem, InferenceError) else InferenceError(str(problem))


def _check_constrained(turn: Any, constraint: Any, max_tokens: int) -> tuple[Any, Any]:
    """(parsed answer, error to raise after the output) for a constrained turn. A grammar that
    never lets the answer end stops at max_tokens: said on stderr, and for JSON an error (the
    answer is not usable)."""
    from localllm.errors import InferenceError
    from localllm.structured import AnswerError

    if constraint is None or turn.stopped:
        return None, None
    cut = turn.stats is not None and turn.stats.stop_reason in ("length", "context")
    if not constraint.is_json:
        if cut:
            err(
                f"note: the answer reached the token limit ({max_tokens}) before the grammar let "
                "it end, so it may be incomplete (raise --max-tokens, or check that the grammar "
                "can finish)"
            )
        return None, None
    try:
        return constraint.parse(turn.answer), None
    except AnswerError as exc:
        if cut:
            return None, InferenceError(
                f"the JSON answer was cut off at the token limit ({max_tokens}) before it was "
                "complete",
                hint="raise --max-tokens (or --ctx); in reasoning mode also consider "
                "--reasoning-budget",
            )
        return None, InferenceError(str(exc))


def _image_fields(session: Any, images: list[Any] | None) -> dict[str, Any]:
    if not images:
        return {}
    pre = session.projector.stats
    return {
        "images": [
            {"name": i.name, "sha256": i.sha256, "width": i.width, "height": i.height}
            for i in images
        ],
        "image_stats": {
            "image_tokens": pre.image_tokens,
            "text_tokens": pre.text_tokens,
            "encoded": pre.encoded,
            "encode_s": round(pre.encode_s, 4),
            "projector": str(session.projector.path),
        },
    }


def reasoning_notes(turn: Any) -> list[str]:
    """What to tell the user, once, about the reasoning of a finished turn."""
    notes = []
    if turn.reasoning_leaked:
        notes.append(
            f"note: the model reasoned anyway in instant mode ({turn.reasoning_tokens} tokens); "
            "that text was kept out of the answer"
        )
    if turn.reasoning_truncated and not turn.stopped:
        notes.append(
            "note: generation ended while the model was still reasoning, so there is no answer "
            "(raise --max-tokens or --ctx, or set --reasoning-budget N)"
        )
    return notes


def _dim(text: str) -> str:
    return f"\x1b[2m{text}\x1b[0m" if sys.stderr.isatty() else text
