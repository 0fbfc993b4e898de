"""Invoice arithmetic at the tier edges of the seed price table, and the cloud cost
estimate from the bundled instance prices."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billow_control.core.billing import invoice, price_lines
from billow_control.core.metering import UsageRecord, aggregate
from billow_control.core.models import InstanceRole
from billow_control.core.settings import ControlSettings

pytestmark = pytest.mark.unit

TIERS = ControlSettings().pricing_tiers


@pytest.mark.parametrize(
    ("cpu_hours", "total", "charged"),
    [
        ("0", "0.00", []),
        ("9999", "0.00", []),
        ("10000", "0.00", []),
        ("10001", "0.05", [("1", "0.05")]),
        ("10000.5", "0.03", [("0.5", "0.05")]),  # 0.025 rounds half up to the cent
        ("99999", "4499.95", [("89999", "0.05")]),
        ("100000", "4500.00", [("90000", "0.05")]),
        ("100001", "4500.04", [("90000", "0.05"), ("1", "0.04")]),
        ("1000000", "40500.00", [("90000", "0.05"), ("900000", "0.04")]),
        ("1000001", "40500.03", [("90000", "0.05"), ("900000", "0.04"), ("1", "0.03")]),
        ("2500000", "85500.00", [("90000", "0.05"), ("900000", "0.04"), ("1500000", "0.03")]),
    ],
)
def test_graduated_tiers_at_their_edges(cpu_hours: str, total: str, charged: list) -> None:
    lines = price_lines(Decimal(cpu_hours), TIERS)
    assert sum(line.amount for line in lines) == Decimal(total)
    paid = [(line.cpu_hours, line.rate) for line in lines if line.rate > 0]
    assert paid == [(Decimal(h), Decimal(r)) for h, r in charged]
    free = lines[0]
    assert free.rate == 0 and free.cpu_hours == min(Decimal(cpu_hours), Decimal(10000))
    assert sum(line.cpu_hours for line in lines) == Decimal(cpu_hours)


def test_the_arithmetic_is_spelled_out() -> None:
    (_, line) = price_lines(Decimal("10001"), TIERS)
    assert line.arithmetic == "1 CPU-h x $0.05 = $0.05"
    assert line.description == "CPU-hours 10,000-100,000"


def test_a_deployment_sets_its_own_tiers() -> None:
    settings = ControlSettings.from_env({"BILLOW_PRICING_TIERS": "0=0,100=0.10"})
    assert settings.pricing_tiers == {0.0: 0.0, 100.0: 0.1}
    assert sum(x.amount for x in price_lines(Decimal(150), settings.pricing_tiers)) == Decimal(5)
    with pytest.raises(ValueError, match="must start at threshold 0"):
        ControlSettings.from_env({"BILLOW_PRICING_TIERS": "100=0.10"})
    with pytest.raises(ValueError, match="thresholds to rates"):
        ControlSettings.from_env({"BILLOW_PRICING_TIERS": "0=free"})


def _record(iid: str, machine: str | None, spot: bool, hours: int, vcpus: int) -> UsageRecord:
    start = datetime(2025, 6, 1, tzinfo=UTC)
    return UsageRecord(
        instance_id=iid,
        cluster_id="c-1",
        owner="u-1",
        team="etl",
        role=InstanceRole.worker,
        machine_type=machine,
        spot=spot,
        vcpus=vcpus,
        started_at=start,
        ended_at=start.replace(hour=hours),
        last_seen_at=start,
    )


def test_invoice_shows_cloud_cost_apart_from_billows_price() -> None:
    records = [
        _record("i-1", "m6i.large", False, 10, 2),  # 10 h on demand at 0.096
        _record("i-2", "m6i.large", True, 10, 2),  # 10 h spot at 0.038
        _record("i-3", None, False, 5, 4),  # a local process: no list price
    ]
    now = datetime(2025, 7, 1, tzinfo=UTC)
    usage = aggregate(records, "2025-06", now)
    bill = invoice("etl", usage, records, TIERS, "USD", now)
    assert bill.cpu_hours == Decimal("60.000000") and bill.total == Decimal("0.00")
    estimate = bill.cloud_estimate
    assert estimate["total"] == "1.34"  # 0.96 + 0.38
    assert estimate["by_type"]["m6i.large (spot)"]["cost"] == "0.38"
    assert estimate["unpriced_instances"] == 1
    assert invoice("ml", usage, records, TIERS, "USD", now).total == Decimal("0.00")


def test_refresh_script_reads_the_pricing_apis_shapes() -> None:
    """The parsers of ``scripts/refresh-prices.py`` on documents shaped as the AWS Price
    List and the Cloud Billing Catalog answer (the script itself needs their network)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "refresh-prices.py"
    spec = importlib.util.spec_from_file_location("refresh_prices", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    item = {
        "terms": {
            "OnDemand": {
                "X.Y": {
                    "priceDimensions": {
                        "X.Y.Z": {"unit": "Hrs", "pricePerUnit": {"USD": "0.0960000000"}}
                    }
                }
            }
        }
    }
    assert script.aws_on_demand(item) == 0.096

    def sku(desc: str, usage: str, nanos: int) -> dict:
        rate = {"unitPrice": {"units": "0", "nanos": nanos}}
        return {
            "description": desc,
            "serviceRegions": ["us-central1"],
            "category": {"resourceFamily": "Compute", "usageType": usage},
            "pricingInfo": [{"pricingExpression": {"tieredRates": [rate]}}],
        }

    skus = [
        sku("N2 Instance Core running in Americas", "OnDemand", 31611000),
        sku("N2 Instance Ram running in Americas", "OnDemand", 4237000),
        sku("Spot Preemptible N2 Instance Core running in Americas", "Preemptible", 7650000),
        sku("Spot Preemptible N2 Instance Ram running in Americas", "Preemptible", 1025000),
        sku("E2 Instance Core running in Americas", "OnDemand", 21811590),
    ]
    n2 = script.gcp_family_prices(skus, "N2", "us-central1")
    assert n2 == {
        "OnDemand": {"core": 0.031611, "ram": 0.004237},
        "Preemptible": {"core": 0.00765, "ram": 0.001025},
    }
    # n2-standard-2: 2 cores + 8 GiB = the table's seed on-demand figure
    assert round(2 * 0.031611 + 8 * 0.004237, 4) == 0.0971
