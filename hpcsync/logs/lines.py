"""Turn raw log bytes into clean logical lines, as a terminal would have shown them.

- Bytes are decoded as UTF-8 with `errors="replace"`: invalid bytes become U+FFFD, never an error.
- `\\r`, `\\n` and `\\r\\n` all end a line: a tqdm bar redraws itself after a bare `\\r`, and each
  redraw is a line of its own. A `\\r\\n` split across two chunks yields one extra empty line,
  which callers skip.
- ANSI CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL|ESC \\`) and short escapes (`ESC 7`,
  `ESC ( B`) are removed.
- A backspace moves the cursor one column left and what follows overwrites: `a\\bb` is `b`, as
  in overstrike and Keras' progress bar. Trailing backspaces erase nothing.
- Other C0 control characters except TAB are removed.

Lines without any control character (nearly all) are returned as they are after one C-level
regex scan. Everything is linear in the length of the text.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-Z\\^-~])")
_BACKSPACES = re.compile(r"(\x08+)")


def decode(data: bytes) -> str:
    """Return data decoded as UTF-8, with U+FFFD for invalid bytes."""
    return data.decode("utf-8", errors="replace")


def split_lines(text: str) -> tuple[list[str], str]:
    """Return the lines of text ended by `\\r`, `\\n` or `\\r\\n`, and the unterminated rest."""
    parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return parts[:-1], parts[-1]


def clean(line: str) -> str:
    """Return line without ANSI escapes, with backspaces applied and other controls removed."""
    # isprintable() is the faster "no control character" for nearly every line.
    if line.isprintable() or _CONTROL.search(line) is None:
        return line
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    if "\x08" in line:
        line = _apply_backspaces(line)
    return _CONTROL.sub("", line)


def clean_lines(text: str) -> list[str]:
    """Return every non-blank line of a complete text, cleaned, including an unterminated last one."""
    lines, rest = split_lines(text)
    lines.append(rest)
    cleaned = (clean(line) for line in lines)
    return [line for line in cleaned if line and not line.isspace()]


def _apply_backspaces(line: str) -> str:
    """Return what a terminal shows for line: each backspace steps back, later text overwrites."""
    parts = _BACKSPACES.split(line)
    screen = list(parts[0])
    cursor = len(screen)
    for run, text in zip(parts[1::2], parts[2::2], strict=True):
        cursor = max(0, cursor - len(run))
        screen[cursor : cursor + len(text)] = text
        cursor += len(text)
    return "".join(screen)
