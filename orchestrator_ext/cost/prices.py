"""Unit prices of a cost estimate: the defaults, and a ``--prices`` YAML file over them.

The defaults are public on-demand list prices, us-east-1, as of 2025: S3 Standard, DynamoDB
on-demand Standard table class, and one vCPU-hour of an EC2 c6i on-demand instance as the
stand-in for a core-hour. ``load_prices`` reads and validates the file; ``parse_prices``
documents its keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator_ext.cost.errors import CostError


@dataclass(frozen=True)
class Prices:
    """Unit prices. Defaults: public on-demand list prices, us-east-1 (see module docstring)."""

    currency: str = field(default="USD", metadata={"help": "Currency of every price."})
    s3_put_per_1000: float = field(
        default=0.005,
        metadata={"help": "S3 Standard PUT, COPY, POST and LIST requests, per 1,000."},
    )
    s3_get_per_1000: float = field(
        default=0.0004,
        metadata={"help": "S3 Standard GET, HEAD and all other requests, per 1,000."},
    )
    s3_storage_gb_month: float = field(
        default=0.023, metadata={"help": "S3 Standard storage, per GB-month (first 50 TB)."}
    )
    dynamodb_write_per_million: float = field(
        default=0.625, metadata={"help": "DynamoDB on-demand write request units, per million."}
    )
    dynamodb_read_per_million: float = field(
        default=0.125, metadata={"help": "DynamoDB on-demand read request units, per million."}
    )
    dynamodb_storage_gb_month: float = field(
        default=0.25, metadata={"help": "DynamoDB Standard table storage, per GB-month."}
    )
    core_hour: float = field(
        default=0.0425,
        metadata={"help": "One core for one hour (default: a c6i vCPU-hour, $0.17/h / 4)."},
    )


#: Keys of a ``--prices`` YAML file -> ``Prices`` fields.
PRICE_KEYS: dict[tuple[str, str], str] = {
    ("s3", "put_per_1000"): "s3_put_per_1000",
    ("s3", "get_per_1000"): "s3_get_per_1000",
    ("s3", "storage_gb_month"): "s3_storage_gb_month",
    ("dynamodb", "write_per_million"): "dynamodb_write_per_million",
    ("dynamodb", "read_per_million"): "dynamodb_read_per_million",
    ("dynamodb", "storage_gb_month"): "dynamodb_storage_gb_month",
    ("compute", "core_hour"): "core_hour",
}


def parse_prices(data: dict[str, Any], source: str = "prices") -> Prices:
    """Prices from a mapping shaped like the ``--prices`` file; missing keys keep defaults.

    The file::

        currency: USD
        s3: {put_per_1000: 0.005, get_per_1000: 0.0004, storage_gb_month: 0.023}
        dynamodb: {write_per_million: 0.625, read_per_million: 0.125, storage_gb_month: 0.25}
        compute: {core_hour: 0.0425}

    Raises:
        CostError: an unknown key, or a price that is not a non-negative number.
    """
    values: dict[str, Any] = {}
    for section, content in data.items():
        if section == "currency":
            values["currency"] = str(content)
            continue
        if not isinstance(content, dict):
            raise CostError(f"{source}: '{section}' must be a mapping of prices")
        for key, value in content.items():
            name = PRICE_KEYS.get((section, key))
            if name is None:
                known = ", ".join(f"{s}.{k}" for s, k in PRICE_KEYS)
                raise CostError(f"{source}: unknown price '{section}.{key}'; known: {known}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise CostError(
                    f"{source}: '{section}.{key}' must be a non-negative number, got {value!r}"
                )
            values[name] = float(value)
    return Prices(**values)


def load_prices(path: str | os.PathLike[str] | None) -> Prices:
    """The default prices, overridden by a YAML file if one is given.

    Raises:
        CostError: the file is missing, not YAML, or has bad keys or values.
    """
    if path is None:
        return Prices()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CostError(f"price file not found: {path}") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise CostError(f"price file {path} is not valid YAML: {detail}") from None
    if data is None:
        return Prices()
    if not isinstance(data, dict):
        raise CostError(f"price file {path} must hold a mapping, got {type(data).__name__}")
    return parse_prices(data, str(path))
