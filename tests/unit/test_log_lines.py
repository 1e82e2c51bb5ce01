"""Line cleaning: decoding, `\\r`/`\\n` breaks, ANSI escapes, backspaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcsync.logs.lines import clean, clean_lines, decode, split_lines

FIXTURES = Path(__file__).parent.parent / "fixtures" / "logs"


def test_decode_replaces_invalid_utf8() -> None:
    assert decode(b"loss=0.5 \xff\xfe caf\xc3\xa9 \xe2\x96") == "loss=0.5 \ufffd\ufffd café \ufffd"


@pytest.mark.parametrize(
    ("text", "lines", "rest"),
    [
        ("a\nb\n", ["a", "b"], ""),
        ("a\r\nb\r\n", ["a", "b"], ""),
        ("bar 1\rbar 2\rbar 3\n", ["bar 1", "bar 2", "bar 3"], ""),
        ("done\npartial", ["done"], "partial"),
        ("\r 10%|#| 1/10\r 20%", ["", " 10%|#| 1/10"], " 20%"),
        ("", [], ""),
    ],
)
def test_split_lines_breaks_on_cr_lf_and_crlf(text: str, lines: list[str], rest: str) -> None:
    assert split_lines(text) == (lines, rest)


def test_split_lines_crlf_across_chunks_gives_an_empty_line() -> None:
    first, rest = split_lines("a\r")
    second, _ = split_lines(rest + "\nb\n")
    assert [*first, *second] == ["a", "", "b"]


def test_clean_leaves_plain_lines_alone() -> None:
    line = "step=1 loss=0.5\ttab kept"
    assert clean(line) is line


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("\x1b[1m 1/24\x1b[0m \x1b[37m━━\x1b[0m loss: 0.5", " 1/24 ━━ loss: 0.5"),
        ("\x1b[A{'loss': '0.69', 'epoch': '1'}", "{'loss': '0.69', 'epoch': '1'}"),
        ("\x1b[38;5;196mred\x1b[0m", "red"),
        ("\x1b]0;window title\x07step=1", "step=1"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1b7saved\x1b8", "saved"),
        ("\x1b(Bascii", "ascii"),
        ("bell\x07 nul\x00 del\x7f", "bell nul del"),
    ],
)
def test_clean_strips_ansi_and_controls(raw: str, cleaned: str) -> None:
    assert clean(raw) == cleaned


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("a\x08b", "b"),
        ("_\x08Xb\x08bold", "Xbold"),
        ("abc\x08\x08XY", "aXY"),
        ("loss: 0.9492\x08\x08\x08\x08\x08\x08", "loss: 0.9492"),
        ("\x08\x08start", "start"),
        ("abcdef\x08\x08\x08\x08\x08\x08xy", "xycdef"),
    ],
)
def test_clean_applies_backspaces_as_a_terminal(raw: str, cleaned: str) -> None:
    assert clean(raw) == cleaned


def test_clean_lines_drops_blank_lines_and_keeps_the_last() -> None:
    text = "\r  0%|  | 0/4\r      \r{'loss': 1.0, 'epoch': 1}\n\x1b[A\n tail"
    assert clean_lines(text) == ["  0%|  | 0/4", "{'loss': 1.0, 'epoch': 1}", " tail"]


def test_keras_verbose1_redraws_become_separate_clean_lines() -> None:
    raw = (FIXTURES / "keras" / "verbose1" / "out.log").read_bytes()
    lines = clean_lines(decode(raw))
    assert lines[0] == "Epoch 1/5"
    assert lines[1].startswith(" 1/24 ━") and lines[1].endswith("- loss: 0.9492")
    assert lines[2].startswith("24/24 ━") and lines[2].endswith("- val_loss: 0.3279")
    assert not any("\x1b" in line or "\x08" in line for line in lines)


def test_megabyte_lines_are_cleaned_linearly() -> None:
    plain = "x" * 1_000_000
    assert clean(plain) is plain
    noisy = ("\x1b[32mab\x1b[0m\x08c" * 100_000) + "\x08" * 10
    assert clean(noisy) == "ac" * 100_000
    lines, rest = split_lines(("y" * 500_000 + "\r") * 2)
    assert [len(line) for line in lines] == [500_000, 500_000] and rest == ""
