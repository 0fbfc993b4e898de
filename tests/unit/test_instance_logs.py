"""Reading the end of a local instance's log (``instance.log.1`` then ``instance.log``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from billow_control.adapters.local.instance_logs import tail_lines
from billow_control.core.log_lines import newest_within

pytestmark = pytest.mark.unit


def write_lines(path: Path, first: int, last: int) -> None:
    path.write_text("".join(f"{n}\n" for n in range(first, last + 1)))


def test_the_last_lines_come_from_the_newest_file(tmp_path: Path) -> None:
    log = tmp_path / "instance.log"
    write_lines(tmp_path / "instance.log.1", 1, 1000)
    write_lines(log, 1001, 200_000)
    assert tail_lines(log, 3) == ["199998", "199999", "200000"]


def test_lines_continue_across_the_rotation(tmp_path: Path) -> None:
    log = tmp_path / "instance.log"
    write_lines(tmp_path / "instance.log.1", 1, 1000)
    write_lines(log, 1001, 1005)
    assert tail_lines(log, 8) == [str(n) for n in range(998, 1006)]
    assert tail_lines(log, 5000) == [str(n) for n in range(1, 1006)]


def test_a_line_still_being_written_is_the_last_line(tmp_path: Path) -> None:
    log = tmp_path / "instance.log"
    log.write_text("one\ntwo\nthr")
    assert tail_lines(log, 2) == ["two", "thr"]


def test_the_byte_limit_bounds_the_read_and_keeps_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "instance.log"
    write_lines(tmp_path / "instance.log.1", 1, 10)
    write_lines(log, 1_000_000, 2_000_000)  # ~8 MB
    lines = tail_lines(log, 10_000_000, byte_limit=4096)
    assert sum(len(line) + 1 for line in lines) <= 4096
    numbers = [int(line) for line in lines]
    assert numbers == list(range(numbers[0], 2_000_001)) and len(numbers) > 400


def test_one_huge_line_beyond_the_limit_reads_as_nothing(tmp_path: Path) -> None:
    log = tmp_path / "instance.log"
    log.write_bytes(b"x" * (3 << 20) + b"\n")
    assert tail_lines(log, 10, byte_limit=1 << 20) == []


def test_missing_logs_read_as_empty(tmp_path: Path) -> None:
    assert tail_lines(tmp_path / "instance.log", 10) == []


def test_an_answer_keeps_the_newest_lines_that_fit_its_budget() -> None:
    lines = [f"line {n}" for n in range(100)]  # each "line NN" costs 9 + 2 bytes
    assert newest_within(lines, 10_000) == lines
    assert newest_within(lines, 33) == ["line 97", "line 98", "line 99"]
    assert newest_within(['"' * 10], 20) == []  # escapes count: 22 bytes encoded
