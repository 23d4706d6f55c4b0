"""Streaming text helpers against their non-streaming answers (Hypothesis, no torch)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from rbee_worker.engines import Delta, merge_deltas
from rbee_worker.engines._text import IncrementalDetokenizer, StopStrings

# A byte-level "vocabulary": whole characters, multi-byte characters cut in pieces, and bytes that
# are never valid UTF-8 on their own. Token i decodes to VOCAB[i].
VOCAB = [
    b"a",
    b" the",
    b"\n",
    "é".encode(),
    "€".encode()[:1],
    "€".encode()[1:],
    "€".encode()[:2],
    "€".encode()[2:],
    "🐝".encode()[:3],
    "🐝".encode()[3:],
    b"\xff",
    b"ok",
]


def decode(ids: Sequence[int]) -> str:
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", errors="replace")


@given(st.lists(st.integers(0, len(VOCAB) - 1), max_size=40))
def test_streamed_text_is_the_decoded_text(ids: list[int]) -> None:
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) + detok.flush() == decode(ids)


def test_a_split_character_is_held_until_complete() -> None:
    euro_head, euro_tail = VOCAB.index("€".encode()[:1]), VOCAB.index("€".encode()[1:])
    detok = IncrementalDetokenizer(decode)
    assert detok.add(0) == "a"
    assert detok.add(euro_head) == ""
    assert detok.add(euro_tail) == "€"
    assert detok.flush() == ""


def test_prompt_context_is_not_repeated() -> None:
    detok = IncrementalDetokenizer(decode, prompt_ids=[11, 1, 0])
    assert detok.add(1) == " the"


@given(
    st.text(alphabet="abc\n", max_size=30),
    st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), max_size=3),
    st.lists(st.integers(1, 5), max_size=30),
)
def test_stop_strings_cut_at_a_stop(text: str, stops: list[str], cuts: list[int]) -> None:
    # Feed the text in chunks of the drawn sizes.
    chunks, at = [], 0
    for size in cuts:
        chunks.append(text[at : at + size])
        at += size
    chunks.append(text[at:])
    matcher = StopStrings(stops)
    out = "".join(matcher.feed(c) for c in chunks)
    if not matcher.stopped:
        out += matcher.flush()
    # Never a stop string in what was released.
    assert not any(s in out for s in stops)
    if matcher.stopped:
        assert any(text.startswith(out + s) for s in stops)
    else:
        assert out == text


def test_stop_string_split_over_pieces_is_never_released() -> None:
    matcher = StopStrings(["END"])
    assert matcher.feed("hello E") == "hello "
    assert matcher.feed("N") == ""
    assert matcher.feed("D and more") == ""
    assert matcher.stopped


def test_held_back_text_is_released_when_it_is_no_stop() -> None:
    matcher = StopStrings(["END"])
    assert matcher.feed("hello EN") == "hello "
    assert matcher.feed("tirely") == "ENtirely"
    assert matcher.flush() == ""


def test_merge_deltas() -> None:
    merged = merge_deltas([Delta("a", (1,), None, 3), Delta("b", (2, 3), "length", 3)])
    assert merged == Delta("ab", (1, 2, 3), "length", 3)
