#!/usr/bin/env python3
"""Refresh the bundled instance price table (functions/billow_control/core/data/
instance_prices.json) from the providers' pricing APIs.

    AWS_PROFILE=... scripts/refresh-prices.py --gcp-api-key KEY [--aws-region us-east-1]
        [--gcp-region us-central1] [--dry-run]

For every instance type already in the table (add a type by adding a row with its vcpus,
memory_gib and gpus first):

* AWS on-demand: the Price List API (``pricing:GetProducts``, served from us-east-1),
  Linux, shared tenancy, no pre-installed software, capacity status ``Used``.
* AWS spot: the latest ``ec2:DescribeSpotPriceHistory`` price of the type in the region
  (the lowest over its availability zones).
* GCP: the Cloud Billing Catalog API (``services/6F81-5844-456A/skus``, Compute Engine):
  a type's hourly price is vcpus x the family's core price + memory_gib x its RAM price
  in the region, on-demand (``OnDemand``) and spot (``Preemptible``) usage types. GPUs of
  GPU types are priced by their accelerator SKU and are not added: such rows keep their
  price (printed as ``kept``).

Needs network access to those APIs and credentials (AWS: any principal allowed
``pricing:GetProducts`` and ``ec2:DescribeSpotPriceHistory``; GCP: an API key with the
Cloud Billing API enabled). The machine this repository's tests run on has neither: the
table shipped is the hand-typed seed, and this script has not been run against the real
APIs here. Prices are written only when every lookup succeeded (or with --dry-run, only
printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TABLE = (
    Path(__file__).resolve().parent.parent
    / "functions/billow_control/core/data/instance_prices.json"
)
AWS_LOCATIONS = {"us-east-1": "US East (N. Virginia)", "us-west-2": "US West (Oregon)",
                 "eu-west-1": "EU (Ireland)", "eu-central-1": "EU (Frankfurt)"}  # fmt: skip
GCP_REGIONS = {"us-central1": "Iowa", "us-east1": "South Carolina", "europe-west1": "Belgium"}
COMPUTE_SERVICE = "services/6F81-5844-456A"


def aws_on_demand(price_list_item: dict[str, Any]) -> float:
    """The hourly USD price of one ``GetProducts`` PriceList entry (its only OnDemand
    term's only dimension in ``Hrs``)."""
    terms = price_list_item["terms"]["OnDemand"]
    for term in terms.values():
        for dim in term["priceDimensions"].values():
            if dim.get("unit") == "Hrs":
                return float(dim["pricePerUnit"]["USD"])
    raise LookupError("no hourly on-demand price in the price list entry")


def aws_prices(types: list[str], region: str) -> dict[str, dict[str, float]]:
    import boto3

    pricing = boto3.client("pricing", region_name="us-east-1")
    ec2 = boto3.client("ec2", region_name=region)
    out: dict[str, dict[str, float]] = {}
    for name in types:
        filters = {
            "instanceType": name,
            "location": AWS_LOCATIONS[region],
            "operatingSystem": "Linux",
            "tenancy": "Shared",
            "preInstalledSw": "NA",
            "capacitystatus": "Used",
        }
        products = pricing.get_products(
            ServiceCode="AmazonEC2",
            Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
        )["PriceList"]
        if len(products) != 1:
            raise LookupError(f"{name}: {len(products)} price list entries, expected 1")
        history = ec2.describe_spot_price_history(
            InstanceTypes=[name],
            ProductDescriptions=["Linux/UNIX"],
            StartTime=datetime.now(UTC),
        )["SpotPriceHistory"]
        if not history:
            raise LookupError(f"{name}: no spot price in {region}")
        out[name] = {
            "on_demand": aws_on_demand(json.loads(products[0])),
            "spot": min(float(h["SpotPrice"]) for h in history),
        }
    return out


def gcp_unit_price(sku: dict[str, Any]) -> float:
    """USD per unit (core-hour or GiB-hour) of one Catalog API SKU's first tier."""
    expr = sku["pricingInfo"][0]["pricingExpression"]
    money = expr["tieredRates"][-1]["unitPrice"]
    return int(money.get("units", 0)) + money.get("nanos", 0) / 1e9


def gcp_family_prices(
    skus: list[dict[str, Any]], family: str, region: str
) -> dict[str, dict[str, float]]:
    """``{"OnDemand"|"Preemptible": {"core": usd, "ram": usd}}`` of one machine family
    (``N2``, ``E2``...) in ``region``, from Catalog API SKUs."""
    found: dict[str, dict[str, float]] = {}
    for sku in skus:
        cat = sku.get("category", {})
        desc = sku.get("description", "")
        if region not in sku.get("serviceRegions", []) or cat.get("resourceFamily") != "Compute":
            continue
        if f"{family} Instance Core" in desc or f"{family} Predefined Instance Core" in desc:
            part = "core"
        elif f"{family} Instance Ram" in desc or f"{family} Predefined Instance Ram" in desc:
            part = "ram"
        else:
            continue
        usage = cat.get("usageType")
        if usage in ("OnDemand", "Preemptible"):
            found.setdefault(usage, {})[part] = gcp_unit_price(sku)
    return found


def gcp_prices(
    table: dict[str, Any], region: str, api_key: str
) -> tuple[dict[str, dict[str, float]], list[str]]:
    import httpx

    skus: list[dict[str, Any]] = []
    token = ""
    for _ in range(200):  # bounded: the catalog has a few thousand SKUs, 5,000 a page
        params = {"key": api_key, "pageSize": "5000", "pageToken": token}
        page = (
            httpx.get(
                f"https://cloudbilling.googleapis.com/v1/{COMPUTE_SERVICE}/skus",
                params=params,
                timeout=60,
            )
            .raise_for_status()
            .json()
        )
        skus += page.get("skus", [])
        token = page.get("nextPageToken", "")
        if not token:
            break
    out, kept = {}, []
    for name, row in table.items():
        if row["gpus"]:
            kept.append(name)
            continue
        family = name.split("-")[0].upper()
        prices = gcp_family_prices(skus, family, region)
        try:
            out[name] = {
                key: round(row["vcpus"] * p["core"] + row["memory_gib"] * p["ram"], 6)
                for key, p in (("on_demand", prices["OnDemand"]), ("spot", prices["Preemptible"]))
            }
        except KeyError as e:
            raise LookupError(f"{name}: no {e} price of family {family} in {region}") from e
    return out, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aws-region", default="us-east-1", choices=sorted(AWS_LOCATIONS))
    parser.add_argument("--gcp-region", default="us-central1", choices=sorted(GCP_REGIONS))
    parser.add_argument("--gcp-api-key", help="a Cloud Billing API key; GCP skipped without")
    parser.add_argument("--dry-run", action="store_true", help="print, do not write")
    args = parser.parse_args(argv)
    table = json.loads(TABLE.read_text())
    try:
        aws = aws_prices(sorted(table["aws"]["types"]), args.aws_region)
        gcp, kept = (
            ({}, [])
            if not args.gcp_api_key
            else gcp_prices(table["gcp"]["types"], args.gcp_region, args.gcp_api_key)
        )
    except Exception as e:  # one line: what failed, nothing written
        print(f"refresh failed, nothing written: {e}", file=sys.stderr)
        return 1
    for cloud, prices in (("aws", aws), ("gcp", gcp)):
        for name, price in prices.items():
            table[cloud]["types"][name].update(price)
            print(f"{cloud} {name}: {price}")
    for name in kept:
        print(f"gcp {name}: kept (GPU types are not refreshed)")
    table["aws"]["region"] = args.aws_region
    if gcp:
        table["gcp"]["region"] = args.gcp_region
    table["source"] = "aws-price-list" + ("+gcp-catalog" if gcp else "")
    table["updated"] = datetime.now(UTC).date().isoformat()
    if not args.dry_run:
        TABLE.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
