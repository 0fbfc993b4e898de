"""The agent takes its one-time token from a pipe (local) or its environment (EC2), and
leaves neither variable behind."""

from __future__ import annotations

import os

import pytest

from billow.agent import take_instance_token

pytestmark = pytest.mark.unit


def test_the_token_comes_from_the_pipe_and_both_variables_go() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"bwi_from-the-pipe")
    os.close(write_end)
    environ = {"BILLOW_INSTANCE_TOKEN_FD": str(read_end), "BILLOW_ROLE": "worker"}
    assert take_instance_token(environ) == "bwi_from-the-pipe"
    assert environ == {"BILLOW_ROLE": "worker"}
    with pytest.raises(OSError):
        os.fstat(read_end)  # closed: nothing left to read it from


def test_ec2_user_data_exports_the_token_and_the_agent_removes_it() -> None:
    environ = {"BILLOW_INSTANCE_TOKEN": "bwi_from-user-data", "BILLOW_ROLE": "scheduler"}
    assert take_instance_token(environ) == "bwi_from-user-data"
    assert environ == {"BILLOW_ROLE": "scheduler"}


def test_no_token_and_a_bad_descriptor() -> None:
    assert take_instance_token({}) is None
    with pytest.raises(OSError):
        take_instance_token({"BILLOW_INSTANCE_TOKEN_FD": "987"})
    with pytest.raises(ValueError):
        take_instance_token({"BILLOW_INSTANCE_TOKEN_FD": "three"})
