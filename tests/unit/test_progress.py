"""The start progress line: live in a terminal, one whole line in a log or a pipe."""

from __future__ import annotations

import pytest

from billow.progress import StartProgress

pytestmark = pytest.mark.unit


def test_outside_a_terminal_the_start_ends_with_one_whole_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with StartProgress("demo", "c-1") as progress:
        progress.update({"status": "provisioning", "workers": 1, "desired_workers": 4})
        progress.update({"status": "ready", "workers": 4, "desired_workers": 4})
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert "billow cluster demo (c-1) ready  workers 4/4" in err


def test_disabled_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with StartProgress("demo", "c-1", enabled=False) as progress:
        progress.update({"status": "ready", "workers": 4, "desired_workers": 4})
    assert capsys.readouterr().err == ""
