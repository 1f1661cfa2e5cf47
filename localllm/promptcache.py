"""Reusing evaluated prompts: the longest common token prefix, and :class:`PromptCache`,
earlier prompts' KV states kept in memory so that clients taking turns on one context do
not evaluate their whole prompt again (llama-server's ``--cache-ram``).

Not for the KV cache of the running context itself, which the engine keeps (its ``_kv``
tokens, ``_forget_after``, ``_save_state``/``_load_state``); this module decides which saved
state to put back, through those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

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
        kv = engine._kv
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
        if engine._load_state(tokens_saved, state):
            self.hits += 1

    def _store(self, engine: Engine) -> None:
        kv = list(engine._kv)
        state = engine._save_state()
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
