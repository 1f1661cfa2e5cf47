"""Choosing each next token: llama.cpp's sampler chain for one generation (penalties,
grammar, top-k/top-p/min-p/temperature or greedy, a seeded draw), GBNF grammars parsed with
llama.cpp's own complaint kept, and the trigger text that switches a lazy grammar on.

Sampling happens in C from the context's logits; no logits cross into Python. Not for the
token loop, detokenization or stop sequences (:mod:`localllm.engine`), nor for drafting
tokens ahead (:mod:`localllm.speculative`).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from localllm import backend
from localllm.errors import UsageError
from localllm.profiles import Profile

if TYPE_CHECKING:
    from localllm.engine import Engine


class Sampler:
    """llama.cpp's sampler chain for one generation, as llama-cpp-python builds it: penalties
    over the last 64 generated tokens, the grammar, then greedy (temperature 0) or top-k,
    top-p, min-p, temperature and a seeded draw.

    A grammar is applied the way llama.cpp's own common sampler does it when it can be: the
    token is drawn without the grammar, the grammar checks that one token, and only when it is
    rejected is the token drawn again through a second chain (grammar, then the same final
    samplers). Running the grammar over the whole vocabulary at every position cost 4-26 ms a
    token on a 49k vocabulary; checking one token costs microseconds. Greedy output is the same
    either way (the best allowed token). With repetition penalties the grammar stays inside the
    one chain: the penalties keep a history of drawn tokens, which a rejected draw would spoil.

    With ``lazy`` the grammar is parsed now (a bad one fails before any decoding) but takes
    effect only when :meth:`enable_grammar` is called.
    """

    PENALTY_LAST_N = 64

    def __init__(
        self, engine: Engine, settings: Profile, seed: int, grammar: str | None, lazy: bool
    ) -> None:
        lib = engine.lib
        self._lib = lib
        self._ctx = engine.native.ctx
        self._settings = settings
        self._seed = seed
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = lib.llama_sampler_chain_init(params)
        self._grammar: Any = None  # parsed, waiting for enable_grammar
        self._gchain: Any = None  # grammar + final samplers: the redraw after a rejection
        self._check: Any = None  # the grammar sampler inside _gchain
        self._has_penalties = False
        self._tail_start = 0
        try:
            penalties = (
                settings.repeat_penalty,
                settings.frequency_penalty,
                settings.presence_penalty,
            )
            if penalties != (1.0, 0.0, 0.0):
                init = lib.llama_sampler_init_penalties
                args = (self.PENALTY_LAST_N, *penalties)
                if len(getattr(init, "argtypes", None) or ()) == 5:  # bindings with n_vocab
                    args = (engine.n_vocab, *args)
                lib.llama_sampler_chain_add(self.chain, init(*args))
                self._has_penalties = True
            self._tail_start = lib.llama_sampler_chain_n(self.chain)
            for smpl in _tail_samplers(lib, settings, seed):
                lib.llama_sampler_chain_add(self.chain, smpl)
            if grammar is not None:
                self._grammar = _parse_grammar(engine, grammar)
                if not lazy:
                    self.enable_grammar()
        except BaseException:
            self.close()
            raise
        self._sample = lib.llama_sampler_sample

    def sample(self) -> int:
        return self.sample_at(-1)

    def sample_at(self, index: int) -> int:
        """Sample from the logits of position ``index`` of the last batch (-1: the last)."""
        token = int(self._sample(self.chain, self._ctx, index))
        check = self._check
        if check is None:
            return token
        lib = self._lib
        one = self._one
        one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
        cur = lib.llama_token_data_array(one, 1, -1, False)
        lib.llama_sampler_apply(check, ctypes.byref(cur))
        if one[0].logit == -math.inf:  # rejected: draw again among the allowed tokens
            return int(self._sample(self._gchain, self._ctx, index))
        lib.llama_sampler_accept(check, token)
        return token

    def accept_injected(self, tokens: Sequence[int]) -> None:
        """Injected tokens count for the penalties (never for the grammar)."""
        if self._has_penalties:
            first = self._lib.llama_sampler_chain_get(self.chain, 0)
            for token in tokens:
                self._lib.llama_sampler_accept(first, token)

    def enable_grammar(self) -> None:
        """Let the waiting grammar constrain every token from now on."""
        if self._grammar is None:
            return
        lib, chain = self._lib, self.chain
        grammar, self._grammar = self._grammar, None
        if self._has_penalties:  # inside the chain, in front of the final samplers
            tail = []
            while lib.llama_sampler_chain_n(chain) > self._tail_start:
                tail.append(lib.llama_sampler_chain_remove(chain, self._tail_start))
            lib.llama_sampler_chain_add(chain, grammar)
            for smpl in tail:
                lib.llama_sampler_chain_add(chain, smpl)
            return
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        self._gchain = lib.llama_sampler_chain_init(params)
        lib.llama_sampler_chain_add(self._gchain, grammar)
        for smpl in _tail_samplers(lib, self._settings, (self._seed + 1) & 0xFFFFFFFF):
            lib.llama_sampler_chain_add(self._gchain, smpl)
        self._check = lib.llama_sampler_chain_get(self._gchain, 0)
        self._one = (lib.llama_token_data * 1)()

    def close(self) -> None:
        self._check = None
        if self._gchain is not None:
            self._lib.llama_sampler_free(self._gchain)
            self._gchain = None
        if self._grammar is not None:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None
        if self.chain is not None:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None


def _tail_samplers(lib: Any, settings: Profile, seed: int) -> list[Any]:
    if settings.temperature <= 0:
        return [lib.llama_sampler_init_greedy()]
    return [
        lib.llama_sampler_init_top_k(settings.top_k),
        lib.llama_sampler_init_top_p(settings.top_p, 1),
        lib.llama_sampler_init_min_p(settings.min_p, 1),
        lib.llama_sampler_init_temp(settings.temperature),
        lib.llama_sampler_init_dist(seed),
    ]


def _parse_grammar(engine: Engine, grammar: str) -> Any:
    """A grammar sampler for ``grammar`` (GBNF, root rule ``root``), or a UsageError that
    quotes llama.cpp's own complaint."""
    lib = engine.lib
    with backend.capture_llama_log() as lines:
        smpl = lib.llama_sampler_init_grammar(engine.native.vocab, grammar.encode("utf-8"), b"root")
    if not smpl:
        said = "; ".join(
            line.strip() for line in lines if line.strip() and "failed to parse" not in line
        )
        raise UsageError(
            "the grammar does not parse" + (f": {said}" if said else ""),
            hint="check the GBNF syntax (rules `name ::= ...`, a `root` rule, quoted literals)",
        )
    return smpl


def sampling_kwargs(settings: Profile) -> dict[str, Any]:
    """A profile's sampling settings as ``Llama.generate`` keyword arguments."""
    return {
        "top_k": settings.top_k,
        "top_p": settings.top_p,
        "min_p": settings.min_p,
        "temp": settings.temperature,
        "repeat_penalty": settings.repeat_penalty,
        "frequency_penalty": settings.frequency_penalty,
        "presence_penalty": settings.presence_penalty,
    }


def watch_trigger(seen: str, text: str, trigger: str, sampler: Sampler) -> str | None:
    """Look for ``trigger`` at the end of the output; when found, switch the sampler's grammar
    on and return None, else the tail worth keeping."""
    seen += text
    if trigger in seen:
        sampler.enable_grammar()
        return None
    return seen[-(len(trigger) - 1) :] if len(trigger) > 1 else ""
