"""``localllm show`` and ``localllm tokenize``: what a model file is, and how it reads text.

Both validate the file in pure Python before llama.cpp sees it; ``tokenize`` then loads the
vocabulary only (no weights), which takes milliseconds.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from localllm.cli._app import app, complete_model, die, print_json

if TYPE_CHECKING:
    from localllm.modelfile import ModelFileInfo

MODEL_HELP = "A .gguf path or the name of an installed model."

THINKING_TEXT = {
    "enable_thinking": "switchable (enable_thinking)",
    "thinking": "switchable (thinking)",
    "prefill": "always (the template opens <think>)",
    "harmony": "harmony channels (reasoning_effort)",
    "none": "no",
}


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def anatomy_rows(info: ModelFileInfo) -> list[tuple[str, str]]:
    """The (label, value) lines of ``localllm show``."""

    def num(value: int | None) -> str:
        return f"{value:,}" if value is not None else "?"

    rows = [
        ("name", info.name),
        ("file", str(info.path)),
        ("architecture", info.architecture),
        ("structure", info.structure),
        ("size", f"{info.size_class} ({info.parameters_text} parameters)"),
        ("layers", num(info.layers)),
        ("embedding", num(info.embedding_size)),
        ("heads", f"{num(info.heads)} ({num(info.kv_heads)} for keys/values)"),
        ("context", f"{num(info.context_length)} tokens"),
        ("quantization", info.quantization),
        ("file size", human_bytes(info.file_size)),
        (
            "tokenizer",
            f"{info.tokenizer}, {num(info.vocab_size)} tokens"
            + (f" ({info.tokenizer_model})" if info.tokenizer_model else ""),
        ),
    ]
    if info.special_tokens:
        rows.append(("special", "  ".join(f"{k}={v}" for k, v in info.special_tokens.items())))
    modality = info.modality
    projector = _projector(info)
    if projector is not None:
        size = human_bytes(projector.stat().st_size) if projector.is_file() else "missing"
        modality = f"text + image (projector {projector.name}, {size})"
    rows.append(("modality", modality))
    embedding = embedding_facts(info)
    if embedding is not None:
        rows.append(("embeddings", embedding["text"]))
    tuning = info.tuning
    tuning += " (has a chat template)" if info.chat_template else " (no chat template)"
    rows.append(("tuning", tuning))
    rows.append(("thinking", THINKING_TEXT.get(info.thinking, info.thinking)))
    rows.append(reasoning_row(info))
    if len(info.split) > 1:
        rows.append(("split", f"{len(info.split)} parts"))
    return rows


def _projector(info: Any) -> Any:
    """The model's vision projector: recorded in the store, else published beside it."""
    from pathlib import Path

    from localllm import store

    return store.projector_of(Path(info.path)) or info.projector


@app.command()
def show(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, autocompletion=complete_model)],
    template: Annotated[
        bool, typer.Option("--template", help="Print only the chat template.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what a model is: structure, size, quantization, tokenizer, chat template, thinking."""
    from localllm import store
    from localllm.modelfile import read_info

    path = store.resolve_model(model)
    other = _foreign_model(model)  # another tool's model, read in place
    info = read_info(path)
    if template:
        if not info.chat_template:
            die(
                "this is a base model: it has no chat template",
                code=3,
                hint="base models continue text; `localllm run` feeds them the prompt as is",
            )
        text = info.chat_template
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    if as_json and other is not None:  # where it lives, and the projector beside it
        data = {**info.as_dict(), "foreign": other.as_dict()}
        data["projector"] = data["projector"] or data["foreign"]["projector"]
        print_json(data)
        return

    if as_json:
        payload = info.as_dict()
        embedding = embedding_facts(info)
        if embedding is not None:
            payload["embedding"] = {k: v for k, v in embedding.items() if k != "text"}
        print_json(payload)
        return
    from rich.table import Table

    from localllm.cli._app import print_table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    rows = anatomy_rows(info)
    if other is not None:
        rows += foreign_rows(other)
    for label, value in rows:
        table.add_row(label, value)
    print_table(table, markup=False)


def _foreign_model(model: str) -> Any:
    """The :class:`localllm.foreign.ForeignModel` an ``ollama:``/``lmstudio:``/``llamacpp:``
    reference names, else None."""
    from localllm import foreign, refs

    parts = refs.foreign_ref(model)
    return foreign.lookup(*parts) if parts else None


def foreign_rows(model: Any) -> list[tuple[str, str]]:
    """Where another tool's model lives, and that localllm only reads it."""
    rows = [
        ("stored by", f"{model.label} (read in place; localllm will not modify it)"),
        ("location", str(model.location)),
    ]
    if model.projector is not None:
        rows.append(("projector", str(model.projector)))
    layers = sorted(k for k in model.extras if k != "config")
    if layers:
        rows.append((f"{model.label} layers", ", ".join(layers)))
    rows.append(("remove", model.remove_hint()))
    return rows


def read_text(text: str) -> str:
    """TEXT, or stdin for ``-``; invalid UTF-8 becomes U+FFFD with one warning."""
    from localllm.cli._app import err
    from localllm.textin import TextInputs

    inputs = TextInputs()
    if text != "-":
        value = inputs.text(text, "TEXT")
    elif sys.stdin is None:
        die("no text on stdin")
    elif (buffer := getattr(sys.stdin, "buffer", None)) is not None:
        value = inputs.data(buffer.read(), "stdin")
    else:
        value = inputs.text(sys.stdin.read(), "stdin")
    if (warning := inputs.warning()) is not None:
        err(warning)
    return value


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def piece_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def token_rows(engine: Any, tokens: list[int]) -> list[dict[str, Any]]:
    rows = []
    for token in tokens:
        piece = engine.piece(token, special=True)
        row: dict[str, Any] = {"id": token, "piece": piece_text(piece)}
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            row["bytes"] = piece.hex()  # part of a character: the exact bytes
        rows.append(row)
    return rows


SPAN_STYLES = (
    "black on bright_cyan",
    "black on bright_yellow",
    "black on bright_green",
    "black on bright_magenta",
)


@app.command()
def tokenize(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, autocompletion=complete_model)],
    text: Annotated[str, typer.Argument(help="The text to tokenize; '-' reads stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    no_special: Annotated[
        bool,
        typer.Option(
            "--no-special",
            help="Read special-token text (like <|im_start|>) as plain text and add no BOS.",
        ),
    ] = False,
) -> None:
    """Show how a model splits text into tokens (loads the vocabulary only)."""
    from localllm import store
    from localllm.engine import Engine, LoadOptions
    from localllm.modelfile import read_info

    path = store.resolve_model(model)
    info = read_info(path)  # validates before llama.cpp opens the file
    source = read_text(text)
    engine = Engine(path, LoadOptions(n_ctx=512, n_threads=1, n_gpu_layers=0, vocab_only=True))
    if no_special:
        tokens = engine.tokenize(source, special=False, add_bos=False)
    else:
        tokens = engine.tokenize(source)
    rows = token_rows(engine, tokens)
    if as_json:
        out = {"tokens": rows, "count": len(rows), "tokenizer": info.tokenizer}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        return
    summary = f"{len(rows)} token{'s' if len(rows) != 1 else ''} ({info.tokenizer})"
    if stdout_is_terminal():
        from rich.console import Console
        from rich.text import Text

        spans = Text()
        ids = Text()
        for i, row in enumerate(rows):
            style = SPAN_STYLES[i % 2]
            spans.append(row["piece"].replace("\n", "↵\n"), style=style)
            ids.append(str(row["id"]), style=style)
            ids.append(" ")
        console = Console(highlight=False)
        console.print(spans)
        console.print(ids)
        console.print(summary, style="dim")
        return
    lines = [
        f"{row['id']}\t{bytes.fromhex(row['bytes'])!r}"
        if "bytes" in row
        else f"{row['id']}\t{row['piece']!r}"
        for row in rows
    ]
    lines.append(summary)
    sys.stdout.write("\n".join(lines) + "\n")


def reasoning_row(info: ModelFileInfo) -> tuple[str, str]:
    """The ``show`` line naming the reasoning adapter that ``run`` and ``chat`` will use."""
    from localllm.reasoning import choose_adapter, describe_adapter

    return ("reasoning", describe_adapter(choose_adapter(info.chat_template)))


def embedding_facts(info: ModelFileInfo) -> dict[str, Any] | None:
    """Dimension and pooling of an embedding model (one that declares a pooling, or any
    encoder-only model), for ``show``; None for other models."""
    from localllm.embeddings import file_pooling

    pooling = file_pooling(info.metadata)
    if pooling is None and info.structure != "encoder-only":
        return None
    dim = info.metadata.get(f"{info.architecture}.embedding_length_out") or info.embedding_size
    text = f"{dim} dimensions, {pooling or 'no'} pooling"
    if pooling in (None, "none"):
        fallback = "mean" if info.structure == "encoder-only" else "last-token"
        text += f" (not trained for similarity; `localllm embed` uses {fallback} pooling)"
    elif pooling == "rank":
        text += " (a reranker: scores text pairs)"
    text += "; no KV cache for generation" if info.structure == "encoder-only" else ""
    return {"dimension": dim, "pooling": pooling, "text": text}
