"""The tailer on real files: offsets, partial lines, truncation, replacement, over-long lines."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from hpcsync.logs import tailer
from hpcsync.logs.tailer import Cursor, TailRead, read_lines


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def _expected(data: bytes) -> list[str]:
    return [part.decode("utf-8", "replace") for part in re.split(rb"[\r\n]", data) if part]


def test_reads_complete_lines_and_holds_back_a_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"loss=1\nloss=2\nlos")
    first = read_lines(str(path), Cursor())
    assert first.lines == ["loss=1", "loss=2"]
    assert first.cursor.offset == len(b"loss=1\nloss=2\n")
    assert not first.restarted and not first.more

    _append(path, b"s=3\n")
    second = read_lines(str(path), first.cursor)
    assert second.lines == ["loss=3"]
    assert read_lines(str(path), second.cursor).lines == []


def test_carriage_returns_end_lines_and_empty_lines_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bar.out"
    path.write_bytes(b" 10%|#| 1/10\r 20%|##| 2/10\r\n\nepoch=1 loss=0.5\r\n\r")
    result = read_lines(str(path), Cursor())
    assert result.lines == [" 10%|#| 1/10", " 20%|##| 2/10", "epoch=1 loss=0.5"]


def test_final_read_returns_the_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"a=1\nb=2")
    result = read_lines(str(path), Cursor(), final=True)
    assert result.lines == ["a=1", "b=2"]
    assert result.cursor.offset == path.stat().st_size


def test_missing_file_keeps_the_cursor(tmp_path: Path) -> None:
    cursor = Cursor(1, 2, 30, "x")
    result = read_lines(str(tmp_path / "absent.out"), cursor)
    assert result.missing and result.cursor == cursor and result.lines == []


def test_truncation_restarts_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"step=1 loss=1\nstep=2 loss=2\n")
    first = read_lines(str(path), Cursor())
    with path.open("wb") as handle:  # O_TRUNC, same inode, as a requeued job's restart does
        handle.write(b"step=1 loss=9\n")
    second = read_lines(str(path), first.cursor)
    assert second.restarted
    assert second.lines == ["step=1 loss=9"]
    assert second.cursor.inode == first.cursor.inode


def test_truncated_and_rewritten_past_the_offset_is_seen_by_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"attempt 1: loss=1\n")
    first = read_lines(str(path), Cursor())
    rewritten = b"attempt 2: loss=5\nattempt 2: loss=4\n"
    with path.open("wb") as handle:
        handle.write(rewritten)
    assert len(rewritten) > first.cursor.offset
    second = read_lines(str(path), first.cursor)
    assert second.restarted
    assert second.lines == ["attempt 2: loss=5", "attempt 2: loss=4"]


def test_replaced_file_restarts_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"old=1\nold=2\nold=3\n")
    first = read_lines(str(path), Cursor())
    replacement = tmp_path / "job.out.new"
    replacement.write_bytes(b"old=1\nold=2\nold=3\nnew=4\n")
    os.replace(replacement, path)
    second = read_lines(str(path), first.cursor)
    assert second.restarted
    assert second.lines == ["old=1", "old=2", "old=3", "new=4"]


def test_unchanged_file_after_restart_keeps_offset(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"x=1\n")
    first = read_lines(str(path), Cursor())
    again = read_lines(str(path), first.cursor)
    assert not again.restarted and again.lines == [] and again.cursor == first.cursor


def test_over_long_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"a=1\n" + b"x" * 5_000_000 + b"\nb=2\n")
    first = read_lines(str(path), Cursor(), max_line_bytes=1000, max_read_bytes=1 << 20)
    assert first.more and first.lines == ["a=1"] and first.cursor.skipping
    lines, skipped, cursor = list(first.lines), first.skipped, first.cursor
    while True:
        result = read_lines(str(path), cursor, max_line_bytes=1000, max_read_bytes=1 << 20)
        lines += result.lines
        skipped += result.skipped
        cursor = result.cursor
        if not result.more:
            break
    assert lines == ["a=1", "b=2"]
    assert skipped == 1


def test_over_long_partial_line_is_not_read_twice(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"a=1\n" + b"y" * 3_000_000)
    first = read_lines(str(path), Cursor(), max_line_bytes=1000)
    assert first.lines == ["a=1"]
    assert first.cursor.skipping
    assert first.cursor.offset == path.stat().st_size  # the long line's bytes are consumed
    _append(path, b"y" * 10 + b"\nb=2\n")
    second = read_lines(str(path), first.cursor, max_line_bytes=1000)
    assert second.lines == ["b=2"]
    assert second.skipped == 1
    assert not second.cursor.skipping


def test_over_long_line_costs_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    with path.open("wb") as handle:
        for _ in range(30):
            handle.write(b"z" * (1 << 20))
        handle.write(b"\nloss=1\n")
    scans: list[int] = []
    original = tailer._Scan.feed

    def watched(scan: tailer._Scan, data: bytes, position: int) -> None:
        original(scan, data, position)
        scans.append(len(scan.pending))

    tailer._Scan.feed = watched  # type: ignore[method-assign,assignment]
    try:
        result = read_lines(str(path), Cursor(), max_line_bytes=4096, max_read_bytes=64 << 20)
    finally:
        tailer._Scan.feed = original  # type: ignore[method-assign]
    assert result.lines == ["loss=1"] and result.skipped == 1
    assert max(scans) <= 4096


def test_over_long_line_at_the_end_of_a_finished_file_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"a=1\n" + b"q" * 5000)
    first = read_lines(str(path), Cursor(), max_line_bytes=100)
    final = read_lines(str(path), first.cursor, max_line_bytes=100, final=True)
    assert final.skipped == 1 and final.lines == [] and not final.cursor.skipping


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"name=\xff\xfe loss=1\n\xe2\x82\xac=2\n")
    result = read_lines(str(path), Cursor())
    assert result.lines == ["name=\ufffd\ufffd loss=1", "\u20ac=2"]


def test_read_budget_splits_a_large_file_into_parts(tmp_path: Path) -> None:
    path = tmp_path / "big.out"
    lines = [f"step={i} loss={i * 0.5}" for i in range(200_000)]
    path.write_bytes(("\n".join(lines) + "\n").encode())
    cursor, got, reads = Cursor(), [], 0
    while True:
        result = read_lines(str(path), cursor, max_read_bytes=1 << 20)
        got.extend(result.lines)
        cursor = result.cursor
        reads += 1
        if not result.more:
            break
    assert got == lines
    assert reads > 2


def test_random_write_splits_give_every_line_once(tmp_path: Path) -> None:
    rng = random.Random(7)
    pieces = []
    for index in range(3000):
        ending = rng.choice([b"\n", b"\r", b"\r\n", b"\n\n"])
        text = f"step={index} loss={rng.random():.4f} \u00e9\u20ac".encode()
        pieces.append(text + ending)
    data = b"".join(pieces)
    path = tmp_path / "job.out"
    path.write_bytes(b"")
    cursor, got, position = Cursor(), [], 0
    while position < len(data):
        size = rng.choice([1, 2, 3, 7, 50, 400, 5000])
        _append(path, data[position : position + size])
        position += size
        result: TailRead = read_lines(str(path), cursor, max_line_bytes=200)
        assert not result.restarted
        got.extend(result.lines)
        cursor = result.cursor
    got.extend(read_lines(str(path), cursor, final=True).lines)
    assert got == _expected(data)
