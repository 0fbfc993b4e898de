from __future__ import annotations

import pytest
from pydantic import ValidationError

from billow_control.core.models import ClusterRequest
from billow_control.core.units import parse_bytes, parse_duration

pytestmark = pytest.mark.unit


def test_defaults_and_bounds() -> None:
    request = ClusterRequest()
    assert request.worker_bounds == (4, 4)
    assert ClusterRequest(n_workers=[0, 10]).worker_bounds == (0, 10)
    assert ClusterRequest(n_workers=[0, 10]).initial_workers == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"n_workers": -1}, "n_workers"),
        ({"n_workers": "4"}, "n_workers"),
        ({"n_workers": 1001}, "n_workers"),
        ({"n_workers": [3, 1]}, "n_workers"),
        ({"n_workers": [1, 2, 3]}, "n_workers"),
        ({"worker_cpu": 0}, "worker_cpu"),
        ({"worker_memory": "100 MiB"}, "worker_memory"),
        ({"idle_timeout": "1s"}, "idle_timeout"),
        ({"name": "-leading-dash"}, "name"),
        ({"surprise": 1}, "surprise"),
        ({"tags": {"billow:cluster-id": "x"}}, "tags"),
        ({"software_environment": "Not_A_Name"}, "software_environment"),
        ({"software_environment": "etl:0"}, "software_environment"),
    ],
)
def test_invalid_fields_are_named(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        ClusterRequest(**fields)
    assert field in {str(err["loc"][0]) for err in e.value.errors()}


def test_software_and_software_environment_are_exclusive() -> None:
    spec = {"python": "3.11", "packages": [{"name": "billow", "version": "0.1.0"}]}
    assert ClusterRequest(software_environment="etl:3").software_environment == "etl:3"
    with pytest.raises(ValidationError, match="software and software_environment"):
        ClusterRequest(software=spec, software_environment="etl")


def test_a_request_without_an_environment_hashes_as_before() -> None:
    """Idempotency-Keys stored before software_environment existed still match."""
    import hashlib
    import json

    from billow_control.core.idempotency import request_hash

    request = ClusterRequest(n_workers=2)
    before = request.model_dump(mode="json", exclude={"software_environment"})
    expected = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert request_hash(request) == expected
    assert request_hash(ClusterRequest(n_workers=2, software_environment="etl")) != expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("20m", 1200.0), ("1.5h", 5400.0), (45, 45.0), ("250ms", 0.25), (None, None)],
)
def test_parse_duration(text: str | int | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


@pytest.mark.parametrize(
    "text",
    ["4 GiB", "2GiB", "100", "1e6", "5kB", "5.4 kB", "1kiB", "1 MiB", "MB", "123 B"]
    + ["1.5 TB", "3 pb", "4 gi", "7g", "0.5 GB", "10 mib", " 3 GB ", 12, 3.7],
)
def test_parse_bytes_follows_dask(text: str | int | float) -> None:
    from dask.utils import parse_bytes as dask_parse_bytes

    assert parse_bytes(text) == dask_parse_bytes(text)


@pytest.mark.parametrize("text", ["5 foos", "x GB", "1..2 GB"])
def test_parse_bytes_names_what_it_could_not_read(text: str) -> None:
    with pytest.raises(ValueError, match="Could not interpret"):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("1e309", "not a finite number"),
        ("inf", "Could not interpret 'inf'"),
        ("nan GiB", "Could not interpret 'nanGiB'"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        ("9" * 400, "not a finite number"),
        ("1e30 GiB", "more than"),
        (2**70, "more than"),
    ],
)
def test_parse_bytes_refuses_numbers_no_integer_holds(value: str | float, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_bytes(value)


@pytest.mark.parametrize("memory", ["1e309", "nan", "1e30 GiB", "2 PiB"])
def test_memory_out_of_range_is_a_validation_error_of_the_field(memory: str) -> None:
    with pytest.raises(ValidationError) as e:
        ClusterRequest(worker_memory=memory)
    (error,) = e.value.errors()
    assert error["loc"] == ("worker_memory",)


def test_models_do_not_import_dask() -> None:
    """The control plane runs in Lambda functions that carry no dask."""
    import subprocess
    import sys

    code = (
        "import sys; from billow_control.core.models import ClusterRecord, ClusterRequest;"
        "ClusterRequest(worker_memory='4 GiB');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dask'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
