"""Speculative decoding's drafters: proposing the next few tokens cheaply, for the target
model to verify in one batch.

:class:`NgramDrafter` looks the context's last n-gram up earlier in the context (prompt
lookup); :class:`ModelDrafter` asks a small model with the same vocabulary. The n-gram drafter
adapts the draft length to the acceptance rate and this machine's batch cost (under ``auto``,
down to no draft while none pays); the draft model drafts a fixed length. Both stop when fewer
than a quarter of their drafts are accepted. Not for verifying drafts or sampling: the
engine's token loop verifies each draft with the same sampler plain decoding uses, so the
output does not change.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from localllm.promptcache import common_prefix

if TYPE_CHECKING:
    from localllm.engine import Engine


SPECULATIVE_AUTO_MIN_PROMPT = 256  # speculative: auto drafts for prompts this long
SPECULATIVE_MAX_DRAFT = 16


class NgramDrafter:
    """Prompt-lookup drafting: the last few tokens of the context are looked up earlier in the
    context (the prompt and the answer so far), and the tokens that followed them there are
    proposed as the next ones. Answers that copy from their prompt (edits, extraction,
    summaries with quotes) then verify several tokens per decode.

    An index from each 2-, 3- and 4-gram to the ends of its occurrences makes a lookup a few
    dictionary probes; the longest n-gram that occurred before wins, at its latest occurrence.
    Once a draft came from a passage, the next ones follow that passage as long as the answer
    does (see :meth:`draft`), and pick it up again after the answer spelt a token otherwise.
    Drafting stops for the rest of a generation when fewer than a quarter of the drafted
    tokens were accepted after :attr:`PROBE` of them: a failing draft costs a wider decode
    for nothing.
    """

    NGRAMS = (4, 3, 2)
    PROBE = 32
    RESYNC = 8  # how far from where the answer left a passage a draft may pick it up
    # A passage just found (looked up, or picked up again) gets a short draft first: most
    # rejected drafts come right there, and a long one costs a long verify for nothing.
    FRESH = 4
    FOLLOWED = 1  # drafted tokens the answer must have copied to pick a passage up again

    def __init__(
        self,
        tokens: Sequence[int],
        size: int = 8,
        *,
        adaptive: bool = False,
        pause: bool = False,
    ) -> None:
        self.history: list[int] = []
        self._index: dict[tuple[int, ...], list[int]] = {}  # n-gram -> ends, in order
        self._indexed = 0
        self.size = size
        self.active = True
        self.adaptive = adaptive
        self.pause = pause  # may decode plainly while no draft length pays (auto)
        self._single: float | None = None
        # adaptive draft length: the verify batch's cost per extra token, as a fraction of one
        # decode (a prior until measured), and drafted tokens accepted / rejected (decayed)
        self._slope = 0.6
        self._plain = 0  # plain decodes since the last draft, while no draft length pays
        self._hits = 2.0
        self._misses = 1.0
        # the passage the last draft came from: (its start, the history length then)
        self._source: tuple[int, int] | None = None
        self._left: tuple[int, int] | None = None  # where the answer left that passage
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        self.history.extend(tokens)

    def _index_upto(self, end: int) -> None:
        history, index = self.history, self._index
        for stop in range(self._indexed + 1, end + 1):
            for n in self.NGRAMS:
                if stop >= n:
                    index.setdefault(tuple(history[stop - n : stop]), []).append(stop)
        self._indexed = max(self._indexed, end)

    def keep_going(self, drafted: int, accepted: int) -> bool:
        if self.active and drafted >= self.PROBE and accepted * 4 < drafted:
            self.active = False
        return self.active

    # Timing: a verify batch of k+1 tokens costs more than one token's decode, by how much
    # depends on the hardware and the weights' kernels (on a small CPU a batch can cost nearly,
    # or at one thread more than, one decode per token). The engine times plain decodes and
    # verify batches; the batch's extra cost per token, as a fraction of a plain decode, is
    # the slope below.

    def timed_single(self, seconds: float) -> None:
        self._single = seconds if self._single is None else 0.8 * self._single + 0.2 * seconds

    def timed_batch(self, seconds: float, n_tokens: int = 0) -> None:
        if n_tokens > 1 and self._single:
            slope = max(0.05, (seconds / self._single - 1.0) / (n_tokens - 1))
            self._slope = 0.7 * self._slope + 0.3 * slope

    # Adaptive draft length. A draft of k tokens is verified in a batch of k + 1 that costs
    # about (1 + slope * k) single decodes; with each drafted token accepted with probability
    # p (after the previous one was), the batch yields 1 + p + ... + p^k tokens on average.
    # The draft length is the k that yields the most tokens per unit of time: long drafts
    # while the answer copies its prompt, short ones when drafts keep failing.
    #
    # Plain decoding (k = 0) yields one token per decode. With ``pause`` (``speculative:
    # auto``), when no draft length is expected to beat it, the engine decodes plainly and
    # drafts only every PROBE_EVERY-th token, which keeps p and the slope current
    # (``speculative: ngram`` always drafts). The first token is always decoded plainly: its
    # time is the yardstick the batches are measured against (before, an answer that copied
    # from its first token never timed a plain decode, and the slope never left its prior).

    PROBE_EVERY = 16

    def draft_size(self) -> int:
        if not self.adaptive:
            return self.size
        if self._single is None:
            return 0
        p = self._hits / (self._hits + self._misses)
        best, best_rate = 1, 0.0
        made, power = 1.0, 1.0
        for k in range(1, self.size + 1):
            power *= p
            made += power
            rate = made / (1.0 + self._slope * k)
            if rate > best_rate:
                best, best_rate = k, rate
        if best_rate > 1.0 or not self.pause:
            self._plain = 0
            return best
        self._plain = (self._plain + 1) % self.PROBE_EVERY
        return 0 if self._plain else best

    def verified(self, accepted: int, drafted: int | None = None) -> None:
        self._hits = 0.9 * self._hits + accepted
        whole = drafted is not None and accepted >= drafted  # no drafted token was rejected
        self._misses = 0.9 * self._misses + (0 if whole else 1)

    def draft(self, most: int) -> list[int]:
        """Up to ``most`` tokens: where the answer goes on copying the passage the last draft
        came from, what follows there; else what followed the current n-gram where it last
        occurred.

        Following the passage matters when the copied text repeats itself: in a code file
        whose functions share a block, the n-gram before each ``return`` last occurred in
        the previous function's copy, whose next tokens are wrong here, while the passage
        being copied knows which function this is."""
        history = self.history
        end = len(history)
        self._index_upto(end - 1)  # every earlier occurrence, never the current one
        if self._source is not None:
            start, at = self._source
            src = start + end - at  # where the passage is now, had the answer kept copying
            n = min(self.NGRAMS[0], src)
            if n and src < end and history[src - n : src] == history[end - n : end]:
                self._source = (src, end)
                return history[src : src + most]
            self._source = None
            # Picked up again only if the answer copied some of it: a passage whose first
            # draft was rejected outright was never being copied (in free text, a 2-gram
            # like "is a" finds one), and resyncing on it drafts on every common word.
            copied = 0
            while at + copied < end and history[at + copied] == history[start + copied]:
                copied += 1
            if copied >= self.FOLLOWED:
                self._left = (src, end)
        if self._left is not None:
            # The answer left the passage a few tokens ago, often only to spell it with other
            # tokens (one blank line as "\n" "\n" where the passage has "\n\n" "\n"): pick
            # the passage up again after the nearest token like the answer's last one.
            src, at = self._left
            here = src + end - at  # where the passage would be, had the answer kept pace
            if end - at > 4 * self.RESYNC:
                self._left = None  # the answer has moved on
            last = history[end - 1]
            for j in range(max(1, here - self.RESYNC), min(end, here + self.RESYNC)):
                if history[j - 1] == last:
                    self._source = (j, end)
                    return history[j : j + min(most, self.FRESH)]
        for n in self.NGRAMS:
            if end < n:
                continue
            ends = self._index.get(tuple(history[end - n :]))
            if ends:
                # the passage's next occurrence, else the latest one
                later = len(ends)
                if self._left is not None:
                    later = bisect.bisect_left(ends, self._left[0] - self.NGRAMS[0])
                found = ends[later] if later < len(ends) else ends[-1]
                self._source = (found, end)
                self._left = None
                return history[found : found + min(most, self.FRESH)]
        return []


class ModelDrafter(NgramDrafter):
    """Draft-model speculation: a small model with the same vocabulary proposes the next
    tokens greedily from the same context; its own KV cache follows the target's context,
    reusing the common prefix between drafts."""

    def __init__(self, draft: Engine, tokens: Sequence[int], size: int = 6) -> None:
        super().__init__((), size)
        self.engine = draft
        self.history = list(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        self.history.extend(tokens)

    def draft(self, most: int) -> list[int]:
        e, history = self.engine, self.history
        room = e.n_ctx - 1
        most = min(most, room - len(history))
        if most <= 0 or len(history) >= room:
            return []
        cached = common_prefix(e.kv_tokens, history)
        if cached == len(history):
            cached -= 1
        e.keep_kv(cached)
        e.evaluate(history[e.n_kv :])
        out: list[int] = []
        for i in range(most):
            token = e.greedy_token()
            out.append(token)
            if e.is_end_of_generation(token) or i + 1 == most:
                break
            e.evaluate((token,))
        return out
