"""``localllm embed``: texts in, vectors out; ``--rank`` for semantic search over a file.

Everything is embedded before anything is written, and files are written to a temporary name
and renamed, so an error (a bad line, an input too long) leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from localllm.cli._app import app, complete_model, err
from localllm.cli.run import GPU_LAYERS_HELP

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("jsonl", "json", "npy")
DEFAULT_EMBED_ALIAS = "nomic-embed-text"


def decode_lines(data: bytes, source: str) -> list[tuple[int, str]]:
    """``(line number, text)`` for each non-blank line; a line that is not UTF-8 is a usage
    error naming it."""
    from localllm.errors import UsageError

    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"line {number} of {source} is not UTF-8 text (bad byte at column {exc.start + 1})",
                hint="convert the input to UTF-8, e.g. with iconv",
            ) from None
        text = text.removesuffix("\r")
        if text.strip():
            out.append((number, text))
    return out


def paragraphs(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join consecutive non-blank lines into paragraphs: ``(first line number, text)``."""
    out: list[tuple[int, str]] = []
    start, buf, prev = 0, [], -1
    for number, text in lines:
        if buf and number != prev + 1:
            out.append((start, "\n".join(buf)))
            buf = []
        if not buf:
            start = number
        buf.append(text)
        prev = number
    if buf:
        out.append((start, "\n".join(buf)))
    return out


def read_source(path: str | None) -> tuple[bytes, str]:
    """The bytes of FILE, or of stdin for ``-``/None."""
    from localllm.errors import UsageError

    if path in (None, "-"):
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(
                "no text given", hint="pass texts as arguments, or pipe lines in on stdin"
            )
        return sys.stdin.buffer.read(), "stdin"
    try:
        return Path(path).read_bytes(), path
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, renamed when complete."""
    import tempfile

    from localllm.errors import UsageError

    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory", hint="name a file inside it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def vector_json(row: np.ndarray) -> str:
    """A float32 vector as a JSON array, each value with float32's round-trip precision."""
    return "[" + ",".join(format(float(x), ".9g") for x in row) + "]"


def _tty() -> bool:
    return sys.stdout.isatty()


def resolve_embed_model(ref: str | None) -> Path:
    from localllm import store
    from localllm.errors import ModelNotFoundError

    if ref:
        return store.resolve_model(ref)
    try:
        return store.resolve_model(DEFAULT_EMBED_ALIAS)
    except ModelNotFoundError:
        raise ModelNotFoundError(
            "no embedding model given",
            hint=f"pass one with -m FILE, or run `localllm pull {DEFAULT_EMBED_ALIAS}` once",
        ) from None


@app.command()
def embed(
    texts: Annotated[
        list[str] | None,
        typer.Argument(
            help="Texts to embed (none or '-': one per line of stdin). With --rank: FILE or '-'.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="An embedding .gguf or an installed model.",
            autocompletion=complete_model,
        ),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="jsonl (default off a terminal), json, or npy (a float32 matrix; needs -o).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of stdout."),
    ] = None,
    normalize: Annotated[
        bool,
        typer.Option("--normalize/--no-normalize", help="L2-normalize each vector."),
    ] = True,
    batch: Annotated[
        int | None,
        typer.Option("--batch", help="Most texts per llama.cpp call.", show_default=False),
    ] = None,
    truncate: Annotated[
        bool,
        typer.Option("--truncate", help="Cut texts longer than the model's context."),
    ] = False,
    pooling: Annotated[
        str | None,
        typer.Option(
            "--pooling", help="mean, cls or last (default: the model's own).", show_default=False
        ),
    ] = None,
    rank_query: Annotated[
        str | None,
        typer.Option(
            "--rank",
            help="Rank the lines of FILE (or stdin) by similarity to this query.",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top", "-k", help="With --rank: how many to show.")] = 5,
    by_paragraph: Annotated[
        bool,
        typer.Option("--paragraphs", help="With --rank: rank paragraphs, not lines."),
    ] = False,
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx", help="Longest text in tokens (default: the model's; 2048 for decoders)."
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads.")] = None,
    gpu_layers: Annotated[str | None, typer.Option("--gpu-layers", help=GPU_LAYERS_HELP)] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show llama.cpp's logs.")
    ] = False,
) -> None:
    """Turn texts into vectors with an embedding model, or rank a file's lines by meaning."""
    from localllm.cli.run import parse_gpu_layers
    from localllm.errors import UsageError

    if output_format is not None and output_format not in FORMATS:
        raise UsageError(
            f"unknown format '{output_format}'", hint="use one of: " + ", ".join(FORMATS)
        )
    if output_format == "npy" and output is None:
        raise UsageError("--format npy writes a binary file", hint="name it with -o PATH")
    if batch is not None and batch < 1:
        raise UsageError("--batch must be at least 1")
    if top_k < 1:
        raise UsageError("-k must be at least 1")
    if rank_query is not None and not rank_query.strip():
        raise UsageError("the --rank query is empty")
    if (by_paragraph or top_k != 5) and rank_query is None:
        raise UsageError("--paragraphs and -k go with --rank QUERY")
    if rank_query is not None and output_format == "npy":
        raise UsageError("--rank prints scores: use --format jsonl or json")

    # Inputs first: a bad line fails before the model loads. Lines of stdin or a file must be
    # UTF-8 (an error names the line: a vector of replaced text would be silently wrong); an
    # argument with undecodable bytes follows the project's rule (U+FFFD and one warning).
    from localllm.textin import TextInputs

    inputs_in = TextInputs()
    if rank_query is not None:
        rank_query = inputs_in.text(rank_query, "the --rank query")
    if rank_query is not None:
        if texts and len(texts) > 1:
            raise UsageError("--rank takes one FILE (or '-' for stdin)")
        data, source = read_source(texts[0] if texts else None)
        source_name = source
        lines = decode_lines(data, source)
        items = paragraphs(lines) if by_paragraph else lines
        if not items:
            raise UsageError(f"nothing to rank: {source} has no text")
    elif texts and texts != ["-"]:  # a lone '-' reads stdin, as for `run` and `--rank`
        items = list(enumerate(inputs_in.texts(texts, "an argument"), start=1))
        source_name = "the arguments"
    else:
        data, source_name = read_source(None)
        items = decode_lines(data, source_name)
    if not items:
        raise UsageError("nothing to embed: no text given", hint="pass texts or pipe lines in")
    if warning := inputs_in.warning():
        err(warning)
    if rank_query is None and output is None and output_format is None and not _tty():
        output_format = "jsonl"

    from localllm.embeddings import Embedder, InputTooLongError

    path = resolve_embed_model(model)
    layers = parse_gpu_layers(gpu_layers)
    embedder = Embedder(
        path,
        pooling=pooling,
        n_ctx=ctx,
        threads=threads,
        gpu_layers=layers if layers is not None else "auto",
        verbose=verbose,
    )
    try:
        if embedder.note:
            err(embedder.note)
        inputs = [text for _, text in items]
        if rank_query is not None:
            inputs = [rank_query, *inputs]
        try:
            result = embedder.embed(
                inputs, normalize=normalize, truncate=truncate, batch_size=batch
            )
        except InputTooLongError as exc:
            raise _name_input(exc, items, rank_query is not None, source_name) from None
    finally:
        embedder.close()
    if result.truncated:
        shown = ", ".join(str(i) for i in result.truncated[:10])
        more = "…" if len(result.truncated) > 10 else ""
        err(
            f"note: truncated {len(result.truncated)} input(s) to {embedder.n_ctx} tokens "
            f"(input {shown}{more})"
        )
    meta = {
        "model": embedder.name,
        "dimension": embedder.dimension,
        "pooling": embedder.pooling,
        "normalized": normalize,
    }
    if rank_query is not None:
        _print_ranking(items, result.vectors, top_k, output_format, output, meta, by_paragraph)
        return
    texts_out = [text for _, text in items]
    _write_vectors(texts_out, result.vectors, output_format, output, meta, result.prompt_tokens)


def _name_input(exc: Any, items: list[tuple[int, str]], ranking: bool, source: str) -> Any:
    """The core's "input N is too long" in the user's terms: which line (or argument)."""
    from localllm.errors import UsageError

    if ranking and exc.index == 0:
        what = "the --rank query"
    else:
        number = items[exc.index - (1 if ranking else 0)][0]
        what = (
            f"text {number} of the arguments"
            if source == "the arguments"
            else (f"line {number} of {source}")
        )
    size = f"at least {exc.n_tokens:,}" if exc.at_least else f"{exc.n_tokens:,}"
    return UsageError(
        f"{what} is {size} tokens, longer than the {exc.limit:,} tokens the model takes",
        hint="pass --truncate to embed its first tokens, or split the text",
    )


def _emit(output: Path | None, write: Callable[[IO[bytes]], None]) -> None:
    if output is not None:
        atomic_write(output, write)
        return
    write(sys.stdout.buffer)
    sys.stdout.buffer.flush()


def _write_vectors(
    texts: list[str],
    vectors: np.ndarray,
    fmt: str | None,
    output: Path | None,
    meta: dict[str, Any],
    prompt_tokens: int,
) -> None:
    if fmt == "npy":
        import numpy as np

        assert output is not None
        atomic_write(output, lambda f: np.save(f, vectors.astype("<f4"), allow_pickle=False))
        err(f"wrote {len(texts)} × {vectors.shape[1]} float32 matrix to {output}")
        return
    if fmt == "jsonl" or (fmt is None and output is not None):

        def write_jsonl(f: IO[bytes]) -> None:
            for text, row in zip(texts, vectors, strict=True):
                line = f'{{"text": {json.dumps(text, ensure_ascii=False)}, "embedding": '
                f.write((line + vector_json(row) + "}\n").encode("utf-8"))

        _emit(output, write_jsonl)
        return
    if fmt == "json":

        def write_json(f: IO[bytes]) -> None:
            head = json.dumps({**meta, "prompt_tokens": prompt_tokens}, ensure_ascii=False)
            f.write((head[:-1] + ', "embeddings": [').encode("utf-8"))
            for i, (text, row) in enumerate(zip(texts, vectors, strict=True)):
                sep = ", " if i else ""
                item = f'{sep}{{"text": {json.dumps(text, ensure_ascii=False)}, "embedding": '
                f.write((item + vector_json(row) + "}").encode("utf-8"))
            f.write(b"]}\n")

        _emit(output, write_json)
        return
    _summary(texts, vectors, meta, prompt_tokens)


def _summary(texts: list[str], vectors: np.ndarray, meta: dict[str, Any], tokens: int) -> None:
    """What a person at a terminal wants to see: one line per text."""
    import numpy as np
    from rich.console import Console

    console = Console(highlight=False)
    console.print(
        f"{meta['model']} · {meta['dimension']} dimensions · {meta['pooling']} pooling · "
        f"{'normalized' if meta['normalized'] else 'not normalized'} · {tokens} tokens",
        style="dim",
        markup=False,
    )
    for i, (text, row) in enumerate(zip(texts, vectors, strict=True), start=1):
        first = ", ".join(f"{x:+.4f}" for x in row[:3])
        prefix = f"{i:>3}  norm {float(np.linalg.norm(row)):.3f}  [{first}, …]  "
        width = max(20, console.width - len(prefix) - 1)
        shown = text.replace("\n", " ")
        shown = shown if len(shown) <= width else shown[: width - 1] + "…"
        console.print(prefix + shown, markup=False)
    console.print(
        "use --format jsonl|json, or --format npy -o FILE, for the full vectors",
        style="dim",
        markup=False,
    )


def _print_ranking(
    items: list[tuple[int, str]],
    vectors: np.ndarray,
    top_k: int,
    fmt: str | None,
    output: Path | None,
    meta: dict[str, Any],
    by_paragraph: bool,
) -> None:
    import numpy as np

    from localllm.embeddings import rank

    scores = rank(vectors[0], vectors[1:])
    order = np.argsort(-scores, kind="stable")[:top_k]
    rows = [
        {"score": round(float(scores[i]), 6), "line": items[i][0], "text": items[i][1]}
        for i in order
    ]
    if fmt in ("jsonl", "json"):
        if fmt == "jsonl":
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        else:
            body = json.dumps({**meta, "results": rows}, ensure_ascii=False) + "\n"
        _emit(output, lambda f: f.write(body.encode("utf-8")))
        return
    lines = []
    for r in rows:
        text = r["text"].replace("\n", " ⏎ ") if by_paragraph else r["text"]
        lines.append(f"{r['score']:.4f}  {r['line']:>5}  {text}")
    body = "\n".join(lines) + "\n"
    _emit(output, lambda f: f.write(body.encode("utf-8")))
