"""Streaming text: incremental detokenization and stop strings. Pure, no torch, no I/O.

Both are small state machines fed one token (or one piece of text) at a time, so an engine can
stream text while it generates and still give the same final text as decoding everything at the
end. They are separate from the engines so Hypothesis can check them against the obvious
non-streaming answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer", "StopStrings"]

Decode = Callable[[Sequence[int]], str]

# How many prompt tokens to decode in front of the first generated one. Tokenizers that drop a
# leading space at the start of a text (SentencePiece) decode the first generated token right
# only with some context before it; vLLM and TGI keep a window of the same size.
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns a stream of token ids into a stream of text, never splitting a character.

    One token of a byte-level BPE can end in the middle of a multi-byte UTF-8 character; decoding
    it alone gives U+FFFD. So text is only released once the tokens seen so far decode cleanly
    (the TGI / vLLM "prefix offset / read offset" scheme): ``prefix`` marks where the window
    decoded last time starts, ``read`` where its already-released text ends.
    """

    def __init__(self, decode: Decode, prompt_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_id: int) -> str:
        """Feed one token; return the text it completes (possibly ``""``)."""
        self._ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """At the end of generation: release whatever is held back, even if it is not clean."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        # The window now starts where the released text ended; keep the ids list short.
        del self._ids[: self._read]
        self._prefix, self._read = 0, len(self._ids)
        return text[len(before) :]


class StopStrings:
    """Cuts generated text at the first occurrence of any stop string (the stop itself is dropped).

    Text that might be the start of a stop string is held back until the next piece shows whether
    it is: a client must never receive characters that turn out to belong to a stop string. Any
    occurrence begins inside the held-back tail, so only that tail needs searching.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated text; return what may be released. Sets ``stopped`` on a match."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[: min(hits)]
        keep = self._partial_tail(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Generation ended without a match: the held-back tail is ordinary text after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_tail(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best
