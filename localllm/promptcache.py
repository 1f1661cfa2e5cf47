"""Reusing evaluated prompts: the longest common token prefix; :class:`PromptCache`,
earlier prompts' KV states kept in memory so that clients taking turns on one context do
not evaluate their whole prompt again (llama-server's ``--cache-ram``); and
:class:`PrefixStore`, the KV state of the part every prompt shares (the chat template's
opening and the system prompt) kept on disk, so that a fresh process does not evaluate it
again (llama-cli's ``--prompt-cache``, for the shared part only).

Not for the KV cache of the running context itself, which the engine keeps (its
``kv_tokens``, ``keep_kv``, ``save_kv``/``load_kv``); this module decides which saved state
to put back, through those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from localllm.durable import file_identity, write_atomic
from localllm.errors import UsageError

if TYPE_CHECKING:
    from localllm.engine import Engine


class PromptCache:
    """KV states of earlier prompts, kept in memory so that a prompt which starts like one of
    them is not evaluated again when other prompts came in between (llama-server's
    ``--cache-ram``). One context serves requests one after another; without this, clients
    that take turns (each with its own conversation, or the same prompt again) each find the
    other's tokens in the KV cache and evaluate their whole prompt again.

    Before a prompt is evaluated (:meth:`prepare`): when the KV cache would lose tokens, its
    state is saved here; when a saved state shares a longer prefix with the prompt than the KV
    cache does, it is loaded in its place. The restored cells are the very values computed
    before, so the output is what keeping those tokens in the KV cache would have given.
    Least recently used states go first past ``limit_bytes``. Prompts with images (negative
    placeholder ids) are left alone.
    """

    def __init__(self, limit_bytes: int, min_tokens: int = 8) -> None:
        self.limit_bytes = limit_bytes
        self.min_tokens = min_tokens  # shorter states are not worth a copy
        self.entries: list[tuple[list[int], bytes]] = []  # least recently used first
        self.hits = 0  # prompts that started from a saved state (tests read it)

    @property
    def size(self) -> int:
        return sum(len(state) for _, state in self.entries)

    def prepare(self, engine: Engine, tokens: Sequence[int]) -> None:
        """Save the KV cache if ``tokens`` would cut it; load the best saved state."""
        kv = engine.kv_tokens
        if any(t < 0 for t in tokens) or any(t < 0 for t in kv):
            return
        here = common_prefix(kv, tokens)
        best, best_n = -1, here
        for i, (saved, _) in enumerate(self.entries):
            n = common_prefix(saved, tokens)
            if n > best_n + 1:  # one token more is not worth a state copy
                best, best_n = i, n
        chosen = self.entries[best] if best >= 0 else None
        if here < len(kv) - 1 and len(kv) >= self.min_tokens:
            self._store(engine)
        if chosen is None or not any(e is chosen for e in self.entries):
            return
        self.entries = [e for e in self.entries if e is not chosen]  # it lives in the KV now
        tokens_saved, state = chosen
        if engine.load_kv(tokens_saved, state):
            self.hits += 1

    def _store(self, engine: Engine) -> None:
        kv = engine.kv_tokens
        state = engine.save_kv()
        if state is None or len(state) > self.limit_bytes:
            return
        # a state this one extends is of no more use
        self.entries = [e for e in self.entries if common_prefix(e[0], kv) < len(e[0])]
        self.entries.append((kv, state))
        total = self.size
        while total > self.limit_bytes and self.entries:
            total -= len(self.entries.pop(0)[1])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


PREFIX_CACHE_ENV = "LOCALLLM_PREFIX_CACHE"  # megabytes of prefix states on disk; 0 or off: none
DEFAULT_PREFIX_CACHE_MB = 256


class PrefixStore:
    """KV states of shared prompt prefixes, one file each under ``folder``.

    A one-shot ``run`` evaluates the chat template's opening and the system prompt before the
    user's words: on the starter model 24 of a 31-token prompt, some 70 ms of a 0.4 s run.
    Those tokens are the same in every run, so their KV state is written here the first time
    and read back after (about 1 ms for 0.5 MB).

    What reaches the disk: only a prefix the session marks as shared (it ends before the first
    user message: ``ChatSession._shared_prefix`` in :mod:`localllm.session`), as tokens and
    their KV cells, in files only the user may read. Each file is named by a hash of the
    model file, the llama.cpp library, the load options that shape the KV cells and the tokens;
    it also holds the tokens, which must match, and a CRC-32 of the state, since llama.cpp
    would load damaged cells without a word. Least recently used files go first past
    ``limit_bytes``.

    Exactness: with a store, the shared prefix is always evaluated as its own batch (on a
    miss, before its state is saved), so a restored prefix gives token for token the output
    that evaluating it gives; it can differ in the last bits from evaluating the whole prompt
    in one batch, as any reuse of the KV cache can.
    """

    MAGIC = b"localllm-prefix-1\n"

    def __init__(
        self, folder: Path, limit_bytes: int = DEFAULT_PREFIX_CACHE_MB << 20, min_tokens: int = 8
    ) -> None:
        self.folder = folder
        self.limit_bytes = limit_bytes
        self.min_tokens = min_tokens
        self.hits = 0
        self.saves = 0

    @classmethod
    def from_env(cls, folder: Path) -> PrefixStore | None:
        """The store ``LOCALLLM_PREFIX_CACHE`` asks for (megabytes; ``0`` or ``off``: none)."""
        value = os.environ.get(PREFIX_CACHE_ENV, "").strip().lower()
        if not value:
            return cls(folder)
        if value in ("off", "no", "false", "none"):
            return None
        try:
            megabytes = float(value)
        except ValueError:
            megabytes = -1.0
        if not 0 <= megabytes < float("inf"):  # NaN fails both
            raise UsageError(
                f"{PREFIX_CACHE_ENV}={value!r} is not a size",
                hint="set it to the megabytes of prompt-prefix states to keep on disk "
                f"(default {DEFAULT_PREFIX_CACHE_MB}), or to 0 or off for none",
            )
        return cls(folder, int(megabytes * (1 << 20))) if megabytes > 0 else None

    def key(self, engine: Engine, tokens: Sequence[int]) -> str:
        """The file name for ``tokens``' state under ``engine``'s model and options."""
        o = engine.options
        model = file_identity(engine.path)
        if model is None:
            raise OSError(f"cannot read {engine.path}")
        lib = getattr(getattr(engine.lib, "_lib", None), "_name", "") or ""  # the CDLL's path
        shape = [o.n_threads, o.n_threads_batch, o.n_gpu_layers, o.n_batch, o.n_ubatch,
                 o.kv_cache_type, o.flash_attn, list(o.rpc)]  # fmt: skip
        ident = [model, file_identity(lib) or lib, shape, list(tokens)]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32] + ".kv"

    def prepare(
        self, engine: Engine, tokens: Sequence[int], cancel: Callable[[], bool] | None = None
    ) -> int:
        """Make ``engine``'s empty KV cache hold ``tokens``: their state read from disk, or
        evaluated and written there. Returns how many came from disk (0 on a miss, and when
        ``tokens`` are too few to be worth a file). ``cancel`` is asked between batches of a
        long prefix; a cancelled evaluation is not written."""
        if len(tokens) < self.min_tokens or engine.n_kv or any(t < 0 for t in tokens):
            return 0
        try:
            path = self.folder / self.key(engine, tokens)
        except OSError:
            return 0
        state = self._read(path, tokens)
        if state is not None and engine.load_kv(list(tokens), state):
            self.hits += 1
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: evicted last
            return len(tokens)
        # its own batch, as on a hit (see the class docstring)
        if engine.evaluate(list(tokens), cancel):
            self._write(path, tokens, engine.save_kv())
        return 0

    def _read(self, path: Path, tokens: Sequence[int]) -> bytes | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        magic = self.MAGIC
        head_end = data.find(b"\n", len(magic))
        if not data.startswith(magic) or head_end < 0:
            return None
        try:
            head = json.loads(data[len(magic) : head_end])
        except ValueError:
            return None
        state = data[head_end + 1 :]
        if (
            not isinstance(head, dict)
            or head.get("tokens") != list(tokens)
            or head.get("crc32") != zlib.crc32(state)  # a damaged state would load silently
        ):
            return None
        return state

    def _write(self, path: Path, tokens: Sequence[int], state: bytes | None) -> None:
        if state is None:
            return
        head = {"tokens": list(tokens), "crc32": zlib.crc32(state)}
        blob = self.MAGIC + json.dumps(head).encode() + b"\n" + state
        if len(blob) > self.limit_bytes:
            return
        try:
            write_atomic(path, blob, durable=False)  # a lost file costs one evaluation
        except OSError:
            return  # a read-only or full disk: run without the store
        self.saves += 1
        self._evict()

    def _evict(self) -> None:
        files = []
        try:
            for entry in os.scandir(self.folder):
                if entry.name.endswith(".kv") and entry.is_file():
                    st = entry.stat()
                    files.append((st.st_mtime_ns, st.st_size, entry.path))
        except OSError:
            return
        files.sort()
        total = sum(size for _, size, _ in files)
        for _, size, name in files:
            if total <= self.limit_bytes:
                break
            try:
                os.unlink(name)
            except OSError:
                continue
            total -= size
