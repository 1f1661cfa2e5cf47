#!/usr/bin/env python3
"""Fuzz the GGUF validator and llama.cpp's loader with mutated tiny models.

A corpus of mutations of valid tiny GGUFs (truncations at every section boundary and at random
points, flipped bytes, huge counts and lengths, negative, misaligned and overlapping tensor
offsets, wrong value and tensor types, odd hyperparameter values) is run case by case in worker
SUBPROCESSES: each case is validated with ``localllm.modelfile.validate_gguf`` and, if that
passes, loaded through ``localllm.engine.Engine`` vocab-only (then tokenizing some text) and in
full. Every case ends as one of:

* ``clean-error``: validation or the engine raised a ``LocalLLMError``;
* ``loaded``: the file passed and loaded (a harmless mutation);
* ``traceback``: some other Python exception escaped;
* ``crash``: the worker died on a signal (segfault, abort) or exited mid-case;
* ``hang``: the case ran past the per-case timeout.

Workers run batches of cases and report each case's start and result on stdout, so a crash is
attributed to the case that was running; the worker is then restarted on the rest of its batch.
The exit status is 1 when any case crashed, hung or raised a traceback.

    python scripts/fuzz_gguf.py --cases 500 --seed 1
    python scripts/fuzz_gguf.py --cases 500 --seed 1 --only 137 -v   # replay one case
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

OUTCOMES = ("clean-error", "loaded", "traceback", "crash", "hang")
FAILURES = ("traceback", "crash", "hang")
# FUZZ_LLAMA_VERBOSE=1 lets llama.cpp's log (and its assert messages) through, for replays.
LLAMA_VERBOSE = os.environ.get("FUZZ_LLAMA_VERBOSE") == "1"
SAMPLE_TEXT = "Hello world! <|im_start|>user\nhi<|im_end|> <think>x</think> héllo 🙂 \t\n 123"


@dataclass
class Case:
    id: int
    base: str
    op: str
    patches: list[tuple[int, str]] = field(default_factory=list)  # (offset, hex bytes)
    size: int | None = None  # truncate to this many bytes

    def apply(self, data: bytes) -> bytes:
        out = bytearray(data)
        for offset, blob in self.patches:
            raw = bytes.fromhex(blob)
            if 0 <= offset < len(out):
                out[offset : offset + len(raw)] = raw[: max(0, len(out) - offset)]
        if self.size is not None:
            del out[self.size :]
        return bytes(out)


# -- the corpus ------------------------------------------------------------------------------


def make_bases(folder: Path) -> dict[str, Path]:
    """The valid files every case mutates."""
    from ggufgen import CHATML_TEMPLATE, write_tiny_gguf

    folder.mkdir(parents=True, exist_ok=True)
    return {
        "chat": write_tiny_gguf(
            folder / "chat.gguf",
            chat_template=CHATML_TEMPLATE,
            n_embd=32,
            n_ff=64,
            n_head=4,
            n_head_kv=2,
        ),
        "spm": write_tiny_gguf(
            folder / "spm.gguf",
            vocab="llama",
            chat_template=None,
            n_embd=32,
            n_ff=64,
            n_head=2,
            n_head_kv=2,
        ),
        "bert": write_tiny_gguf(
            folder / "bert.gguf",
            arch="bert",
            vocab="bert",
            chat_template=None,
            weights=False,
            n_embd=32,
        ),
        "t5": write_tiny_gguf(
            folder / "t5.gguf", arch="t5", vocab="t5", chat_template=None, weights=False, n_embd=32
        ),
    }


def u32(v: int) -> str:
    return struct.pack("<I", v & 0xFFFFFFFF).hex()


def u64(v: int) -> str:
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF).hex()


WEIRD_U32 = [
    0,
    1,
    2,
    3,
    7,
    63,
    64,
    255,
    256,
    4096,
    1 << 16,
    1 << 24,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
]
WEIRD_U64 = [
    0,
    1,
    2,
    255,
    1 << 16,
    1 << 24,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 62,
    1 << 63,
    (1 << 64) - 1,
    (1 << 64) - 8,
    (1 << 64) - 32,
]


class Corpus:
    """Mutations of one base file, drawn from ``rng``."""

    def __init__(self, name: str, path: Path, rng: random.Random) -> None:
        from ggufgen import gguf_layout

        self.name = name
        self.data = path.read_bytes()
        self.layout = gguf_layout(path)
        self.rng = rng

    def boundary_truncations(self) -> list[tuple[str, int]]:
        return [
            (f"truncate at boundary {p}", p)
            for p in self.layout.boundaries()
            if p < self.layout.size
        ]

    def mutate(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        kinds = [
            (self.truncate_random, 2),
            (self.flip_bytes, 5),
            (self.counts, 2),
            (self.string_length, 3),
            (self.array_header, 3),
            (self.value_type, 3),
            (self.int_value, 8),
            (self.same_size_type, 3),
            (self.tensor_offset, 4),
            (self.tensor_shape, 4),
            (self.tensor_type, 3),
            (self.array_item, 4),
            (self.token_text, 4),
            (self.combo, 2),
        ]
        funcs, weights = zip(*kinds, strict=True)
        return rng.choices(funcs, weights)[0]()

    # Each returns (description, patches, truncated size).

    def truncate_random(self) -> tuple[str, list[tuple[int, str]], int | None]:
        limit = self.layout.data_start + 64 if self.rng.random() < 0.8 else self.layout.size
        at = self.rng.randrange(0, min(limit, self.layout.size))
        return f"truncate at {at}", [], at

    def flip_bytes(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        end = self.layout.data_start if rng.random() < 0.9 else self.layout.size
        patches = []
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(0, end)
            value = (
                self.data[at] ^ (1 << rng.randrange(8))
                if rng.random() < 0.6
                else rng.randrange(256)
            )
            patches.append((at, f"{value:02x}"))
        return f"flip bytes at {[p[0] for p in patches]}", patches, None

    def counts(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        field_at, real = rng.choice(
            [
                (self.layout.n_kv_at, len(self.layout.kvs)),
                (self.layout.n_tensors_at, len(self.layout.tensors)),
            ]
        )
        value = rng.choice([*WEIRD_U64, real - 1, real + 1, real * 2, rng.getrandbits(64)])
        name = "key/value count" if field_at == self.layout.n_kv_at else "tensor count"
        return f"{name} = {value}", [(field_at, u64(value))], None

    def string_length(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        kv = rng.choice(self.layout.kvs)
        if rng.random() < 0.5 or kv.value_type != 8:
            at, what = kv.start, f"key length of {kv.key}"
        else:
            at, what = kv.value_at, f"string length of {kv.key}"
        real = struct.unpack_from("<Q", self.data, at)[0]
        value = rng.choice([*WEIRD_U64, real + 1, real - 1, real + 8, self.layout.size])
        return f"{what} = {value}", [(at, u64(value))], None

    def array_header(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        arrays = [kv for kv in self.layout.kvs if kv.value_type == 9]
        kv = rng.choice(arrays)
        if rng.random() < 0.5:
            value = rng.choice([*range(0, 14), 0xFFFFFFFF, rng.getrandbits(32)])
            return f"array item type of {kv.key} = {value}", [(kv.value_at, u32(value))], None
        real = struct.unpack_from("<Q", self.data, kv.value_at + 4)[0]
        value = rng.choice([*WEIRD_U64, real - 1, real + 1, real // 2, 0])
        return f"array count of {kv.key} = {value}", [(kv.value_at + 4, u64(value))], None

    def _items(self, kv: Any) -> list[tuple[int, int]]:
        """(offset, size) of each item's bytes in the array ``kv`` (strings: the text)."""
        itype, count = struct.unpack_from("<IQ", self.data, kv.value_at)
        at = kv.value_at + 12
        items = []
        fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        for _ in range(count):
            if itype == 8:
                (n,) = struct.unpack_from("<Q", self.data, at)
                items.append((at + 8, n))
                at += 8 + n
            else:
                items.append((at, fixed[itype]))
                at += fixed[itype]
        return items

    def array_item(self) -> tuple[str, list[tuple[int, str]], int | None]:
        """A number inside an array: token types, scores."""
        rng = self.rng
        arrays = [kv for kv in self.layout.kvs if kv.value_type == 9 and kv.item_type != 8]
        if not arrays:
            return self.token_text()
        kv = rng.choice(arrays)
        items = self._items(kv)
        if not items:
            return self.value_type()
        i = rng.randrange(len(items))
        at, size = items[i]
        if kv.item_type == 6:
            value = rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -1e30, 1e30])
            blob = struct.pack("<f", value).hex()
        else:
            blob = (
                rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 99, -1, 1 << 31])
                .to_bytes(8, "little", signed=True)[:size]
                .hex()
            )
        return f"item {i} of {kv.key} = {blob}", [(at, blob)], None

    def token_text(self) -> tuple[str, list[tuple[int, str]], int | None]:
        """Rewrite a token's text in place: NULs, invalid UTF-8, another token's text."""
        rng = self.rng
        kv = next(k for k in self.layout.kvs if k.key == "tokenizer.ggml.tokens")
        items = self._items(kv)
        i = rng.randrange(len(items))
        at, size = items[i]
        if size == 0:
            return self.flip_bytes()
        kind = rng.choice(["nul", "invalid utf-8", "random", "copy"])
        if kind == "nul":
            blob = bytearray(self.data[at : at + size])
            blob[rng.randrange(size)] = 0
        elif kind == "invalid utf-8":
            blob = bytearray(self.data[at : at + size])
            blob[rng.randrange(size)] = rng.choice([0x80, 0xC3, 0xFF, 0xED])
        elif kind == "random":
            blob = bytearray(rng.getrandbits(8) for _ in range(size))
        else:
            same = [(a, n) for a, n in items if n == size and a != at]
            if not same:
                return self.flip_bytes()
            src, _ = rng.choice(same)
            blob = bytearray(self.data[src : src + size])
        return f"token {i} text ({kind}) = {bytes(blob)!r}", [(at, bytes(blob).hex())], None

    def value_type(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        kv = rng.choice(self.layout.kvs)
        value = rng.choice([*range(0, 16), 0xFFFFFFFF, rng.getrandbits(32)])
        return f"value type of {kv.key} = {value}", [(kv.type_at, u32(value))], None

    def int_value(self) -> tuple[str, list[tuple[int, str]], int | None]:
        """Keep the type, change the number: hyperparameters, token ids, alignment."""
        rng = self.rng
        ints = [kv for kv in self.layout.kvs if kv.value_type in (4, 5, 10, 11)]
        kv = rng.choice(ints)
        size = 8 if kv.value_type in (10, 11) else 4
        real = struct.unpack_from("<Q" if size == 8 else "<I", self.data, kv.value_at)[0]
        choices = [*WEIRD_U32, real + 1, real - 1, real * 2, real // 2]
        value = rng.choice(choices) & ((1 << (8 * size)) - 1)
        blob = u64(value) if size == 8 else u32(value)
        return f"{kv.key} = {value}", [(kv.value_at, blob)], None

    def same_size_type(self) -> tuple[str, list[tuple[int, str]], int | None]:
        """A type of the same size: the file still parses, the reader must check types."""
        rng = self.rng
        groups = [(0, 1, 7), (2, 3), (4, 5, 6), (10, 11, 12)]
        kv = rng.choice(
            [
                k
                for k in self.layout.kvs
                if any(k.value_type in g for g in groups) or k.value_type == 9
            ]
        )
        if kv.value_type == 9:
            item = kv.item_type
            group = next((g for g in groups if item in g), None)
            if group is None:
                return self.value_type()
            value = rng.choice([t for t in group if t != item] or [item])
            return f"array item type of {kv.key} = {value}", [(kv.value_at, u32(value))], None
        group = next(g for g in groups if kv.value_type in g)
        value = rng.choice([t for t in group if t != kv.value_type])
        return f"value type of {kv.key} = {value}", [(kv.type_at, u32(value))], None

    def tensor_offset(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        layout = self.layout
        t = rng.choice(layout.tensors)
        real = t.data_start - layout.data_start
        other = rng.choice(layout.tensors)
        kind, value = rng.choice(
            [
                ("negative", -(rng.randint(1, 64) * layout.alignment)),
                ("overlapping", other.data_start - layout.data_start),
                ("overlapping", other.data_start - layout.data_start + layout.alignment),
                ("misaligned", real + rng.randint(1, layout.alignment - 1)),
                ("past the end", layout.size - layout.data_start + layout.alignment),
                ("past the end", rng.choice(WEIRD_U64)),
                ("random", rng.getrandbits(rng.choice([8, 16, 24, 64]))),
            ]
        )
        return f"{kind} offset of {t.name} = {value}", [(t.offset_at, u64(value))], None

    def tensor_shape(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        t = rng.choice(self.layout.tensors)
        if rng.random() < 0.35:
            value = rng.choice([0, 1, 2, 3, 4, 5, 8, 9, 64, 0xFFFFFFFF])
            return f"n_dims of {t.name} = {value}", [(t.n_dims_at, u32(value))], None
        d = rng.randrange(t.n_dims)
        real = struct.unpack_from("<Q", self.data, t.dims_at + 8 * d)[0]
        value = rng.choice([*WEIRD_U64, real + 1, real * 2, real // 2, real + 32])
        return (f"dimension {d} of {t.name} = {value}", [(t.dims_at + 8 * d, u64(value))], None)

    def tensor_type(self) -> tuple[str, list[tuple[int, str]], int | None]:
        rng = self.rng
        t = rng.choice(self.layout.tensors)
        value = rng.choice([*range(0, 42), 0xFFFFFFFF, rng.getrandbits(32)])
        return f"ggml type of {t.name} = {value}", [(t.type_at, u32(value))], None

    def combo(self) -> tuple[str, list[tuple[int, str]], int | None]:
        parts = [self.mutate() for _ in range(2)]
        patches = [p for _, ps, _ in parts for p in ps]
        sizes = [s for _, _, s in parts if s is not None]
        return " + ".join(d for d, _, _ in parts), patches, min(sizes) if sizes else None


def make_cases(bases: dict[str, Path], n: int, seed: int) -> list[Case]:
    """``n`` cases: every section-boundary truncation of the bases first, then mutations."""
    rng = random.Random(seed)
    corpora = {name: Corpus(name, path, rng) for name, path in bases.items()}
    cases: list[Case] = []
    boundary = [
        (name, desc, at) for name, c in corpora.items() for desc, at in c.boundary_truncations()
    ]
    budget = n // 2  # at most half the corpus goes to boundary truncations
    if len(boundary) > budget:
        boundary = sorted(rng.sample(boundary, budget), key=lambda b: (b[0], b[2]))
    for name, desc, at in boundary:
        cases.append(Case(len(cases), name, desc, [], at))
    names = list(corpora)
    weights = [4 if name in ("chat", "spm") else 1 for name in names]
    while len(cases) < n:
        name = rng.choices(names, weights)[0]
        desc, patches, size = corpora[name].mutate()
        cases.append(Case(len(cases), name, desc, patches, size))
    return cases


# -- the worker ----------------------------------------------------------------------------


def run_case(path: Path, load: bool) -> tuple[str, str]:
    """Validate, then load vocab-only (tokenizing some text) and in full."""
    from localllm.engine import Engine, LoadOptions
    from localllm.errors import LocalLLMError
    from localllm.modelfile import read_info, validate_gguf

    try:
        validate_gguf(path)
        read_info(path)
    except LocalLLMError as exc:
        return "clean-error", f"validate: {exc}"
    if not load:
        return "loaded", "valid"
    stage = "vocab-only load"

    def at(name: str) -> None:
        print(f"--- {name}", file=sys.stderr, flush=True)

    try:
        at(stage)
        engine = Engine(
            path,
            LoadOptions(
                n_ctx=64, n_threads=1, n_gpu_layers=0, vocab_only=True, verbose=LLAMA_VERBOSE
            ),
        )
        stage = "tokenize"
        at(stage)
        tokens = engine.tokenize(SAMPLE_TEXT)
        for token in tokens:
            engine.piece(token, special=True)
        del engine
        stage = "full load"
        at(stage)
        engine = Engine(
            path, LoadOptions(n_ctx=64, n_threads=1, n_gpu_layers=0, verbose=LLAMA_VERBOSE)
        )
        del engine
    except LocalLLMError as exc:
        return "clean-error", f"{stage}: {exc}"
    return "loaded", f"{len(tokens)} tokens"


def _inject(case_id: int) -> None:
    """Test hook: FUZZ_INJECT="ID:segfault,ID:abort,ID:hang,ID:raise" makes those cases fail
    on purpose, so the harness's own catching and attribution can be tested."""
    for item in os.environ.get("FUZZ_INJECT", "").split(","):
        target, _, kind = item.partition(":")
        if target != str(case_id):
            continue
        if kind == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif kind == "abort":
            os.abort()
        elif kind == "hang":
            time.sleep(3600)
        elif kind == "raise":
            raise RuntimeError("injected failure")


def worker(spec_file: Path, bases_dir: Path, load: bool) -> None:
    import traceback

    specs = json.loads(spec_file.read_text())
    data = {name: (bases_dir / f"{name}.gguf").read_bytes() for name in {s["base"] for s in specs}}
    # Each case gets a fresh name: the validator caches by path, size and mtime.
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=bases_dir))
    for spec in specs:
        case = Case(**spec)
        path = folder / f"case-{case.id}.gguf"
        path.write_bytes(case.apply(data[case.base]))
        print(f"=== case {case.id}", file=sys.stderr, flush=True)
        print(f"START {case.id}", flush=True)
        try:
            _inject(case.id)
            outcome, detail = run_case(path, load)
        except BaseException as exc:
            tb = traceback.format_exc(limit=6)
            outcome, detail = "traceback", f"{type(exc).__name__}: {exc}\n{tb}"
        print(f"RESULT {case.id} {outcome} {json.dumps(detail)}", flush=True)
        path.unlink()
    shutil.rmtree(folder, ignore_errors=True)


# -- the parent ------------------------------------------------------------------------------


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str


class Batch:
    """A worker subprocess running some cases; restarted after a crash."""

    def __init__(self, cases: list[Case], workdir: Path, load: bool, timeout: float) -> None:
        self.pending = list(cases)
        self.workdir = workdir
        self.load = load
        self.timeout = timeout
        self.results: list[Result] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.current: Case | None = None
        self.deadline = 0.0
        self.buffer = b""
        self.stderr_path = workdir / f"worker-{id(self)}.log"

    def start(self) -> None:
        spec = self.workdir / f"spec-{id(self)}-{self.pending[0].id}.json"
        spec.write_text(json.dumps([asdict(c) for c in self.pending]))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(spec),
            "--workdir",
            str(self.workdir),
        ]
        if not self.load:
            cmd.append("--no-load")
        env = dict(os.environ, PYTHONFAULTHANDLER="1", OMP_NUM_THREADS="1", GGML_NO_BACKTRACE="1")
        self.stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, env=env
        )
        self.current = None
        self.deadline = time.monotonic() + self.timeout + 30  # startup
        self.buffer = b""

    @property
    def done(self) -> bool:
        return not self.pending and self.proc is None

    def fileno(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def on_readable(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        chunk = os.read(self.fileno(), 1 << 16)
        if not chunk:
            self.finish_worker()
            return
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.on_line(line.decode("utf-8", errors="replace"))

    def on_line(self, line: str) -> None:
        by_id = {c.id: c for c in self.pending}
        if line.startswith("START "):
            self.current = by_id.get(int(line.split()[1]))
            self.deadline = time.monotonic() + self.timeout
        elif line.startswith("RESULT "):
            _, case_id, outcome, detail = line.split(" ", 3)
            case = by_id[int(case_id)]
            self.results.append(Result(case, outcome, json.loads(detail)))
            self.pending.remove(case)
            self.current = None

    def stderr_tail(self) -> str:
        text = self.stderr_path.read_bytes().decode("utf-8", errors="replace")
        text = text.rsplit("=== case ", 1)[-1].split("\n", 1)[-1]  # this case's output only
        lines = [line for line in text.splitlines() if line.strip()]
        return "\n".join(lines[-12:])

    def finish_worker(self, outcome: str | None = None) -> None:
        """The worker's stdout closed (or it hung): attribute any unfinished case."""
        assert self.proc is not None
        if outcome == "hang":
            self.proc.kill()
        code = self.proc.wait()
        self.stderr.close()
        self.proc = None
        if self.pending:
            case = self.current or self.pending[0]
            if outcome is None:
                outcome = "crash"
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            if outcome == "hang":
                how = f"no result within {self.timeout:.0f}s"
            self.results.append(Result(case, outcome, f"{how}\n{self.stderr_tail()}"))
            self.pending.remove(case)
            if self.pending:
                self.start()

    def check_deadline(self) -> None:
        if self.proc is not None and time.monotonic() > self.deadline:
            self.finish_worker("hang")


def run_cases(
    cases: list[Case],
    workdir: Path,
    *,
    jobs: int,
    batch: int,
    load: bool,
    timeout: float,
    progress: bool,
) -> list[Result]:
    chunks = [cases[i : i + batch] for i in range(0, len(cases), batch)]
    waiting = [Batch(chunk, workdir, load, timeout) for chunk in chunks]
    running: list[Batch] = []
    results: list[Result] = []
    total = len(cases)
    while waiting or running:
        while waiting and len(running) < jobs:
            b = waiting.pop(0)
            b.start()
            running.append(b)
        readable, _, _ = select.select(running, [], [], 1.0)
        for b in readable:
            b.on_readable()
        for b in running:
            b.check_deadline()
        for b in [b for b in running if b.done]:
            running.remove(b)
            results.extend(b.results)
            if progress:
                print(f"  {len(results)}/{total} cases", file=sys.stderr, flush=True)
    return sorted(results, key=lambda r: r.case.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=500, help="number of cases (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch", type=int, default=100, help="cases per worker process")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="workers at once"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--no-load", action="store_true", help="validate only, never load")
    parser.add_argument("--only", type=int, action="append", help="run only this case id")
    parser.add_argument("--keep", type=Path, help="save failing cases' files here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case")
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args.worker, args.workdir, load=not args.no_load)
        return 0

    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-gguf-"))
    try:
        bases = make_bases(workdir)
        cases = make_cases(bases, args.cases, args.seed)
        if args.only:
            cases = [c for c in cases if c.id in set(args.only)]
        results = run_cases(
            cases,
            workdir,
            jobs=max(1, args.jobs),
            batch=max(1, args.batch),
            load=not args.no_load,
            timeout=args.timeout,
            progress=args.verbose,
        )
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for r in results:
                if r.outcome in FAILURES:
                    data = r.case.apply(bases[r.case.base].read_bytes())
                    (args.keep / f"case-{r.case.id}.gguf").write_bytes(data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    counts = Counter(r.outcome for r in results)
    failures = [r for r in results if r.outcome in FAILURES]
    elapsed = time.monotonic() - start
    if args.json:
        summary = {
            "cases": len(results),
            "seed": args.seed,
            "seconds": round(elapsed, 2),
            "counts": {o: counts.get(o, 0) for o in OUTCOMES},
            "failures": [
                {
                    "id": r.case.id,
                    "base": r.case.base,
                    "op": r.case.op,
                    "outcome": r.outcome,
                    "detail": r.detail,
                }
                for r in failures
            ],
        }
        print(json.dumps(summary, indent=2))
    else:
        if args.verbose:
            for r in results:
                first = r.detail.splitlines()[0] if r.detail else ""
                print(f"{r.case.id:5d} {r.case.base:5s} {r.outcome:11s} {r.case.op}  | {first}")
        for r in failures:
            print(f"\n{r.outcome.upper()} case {r.case.id} ({r.case.base}: {r.case.op})")
            print(
                f"  replay: python scripts/fuzz_gguf.py --cases {args.cases} "
                f"--seed {args.seed} --only {r.case.id} -v"
            )
            print("  " + r.detail.replace("\n", "\n  "))
        line = ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES)
        print(f"\n{len(results)} cases in {elapsed:.1f}s: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
