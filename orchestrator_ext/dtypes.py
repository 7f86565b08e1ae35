"""The dtype names a config may use (``job.output_schema``): polars' own names, parsed
strictly, one canonical spelling each (``canonical_dtype``), and the polars dtype each names
(``polars_dtype``). ``output_schema.dtype_name`` is the way back, from a dtype to its name.
"""

from __future__ import annotations

from typing import Any

from orchestrator_ext.errors import ConfigError

#: dtype names ``job.output_schema`` takes as they are (polars' names; ``Utf8`` is ``String``).
SIMPLE_DTYPES = (
    "Boolean", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
    "Float32", "Float64", "String", "Binary", "Date", "Time", "Null",
)  # fmt: skip
_TIME_UNITS = ("ns", "us", "ms")
DTYPE_HELP = (
    f"{', '.join(SIMPLE_DTYPES)}, Datetime, Datetime(ns|us|ms[, TIME_ZONE]), "
    "Duration, Duration(ns|us|ms), Decimal(PRECISION, SCALE), List(DTYPE)"
)


def _parse_dtype(text: str) -> tuple[Any, ...]:
    """A dtype name as a tuple: ``("Int64",)``, ``("Datetime", unit, tz)``,
    ``("Duration", unit)``, ``("Decimal", precision, scale)``, ``("List", inner)``.

    Raises:
        ValueError: the name is not one of ``DTYPE_HELP``.
    """
    text = text.strip()
    name, paren, rest = text.partition("(")
    name = name.strip()
    if paren and not rest.endswith(")"):
        raise ValueError(f"unbalanced parentheses in {text!r}")
    args = rest[:-1].strip() if paren else None
    name = "String" if name == "Utf8" else name
    if name in SIMPLE_DTYPES and args is None:
        return (name,)
    if name == "List" and args:
        return ("List", _parse_dtype(args))
    parts = [p.strip() for p in args.split(",")] if args else []
    if name == "Datetime" and len(parts) <= 2:
        unit = parts[0] if parts else "us"
        zone = parts[1] if len(parts) == 2 else None
        if unit in _TIME_UNITS and zone != "":
            return ("Datetime", unit, zone)
    if name == "Duration" and len(parts) <= 1 and (parts or ["us"])[0] in _TIME_UNITS:
        return ("Duration", (parts or ["us"])[0])
    if name == "Decimal" and len(parts) == 2 and all(p.isdigit() for p in parts):
        return ("Decimal", int(parts[0]), int(parts[1]))
    raise ValueError(f"unknown dtype {text!r}")


def _dtype_text(parsed: tuple[Any, ...]) -> str:
    kind = parsed[0]
    if kind == "List":
        return f"List({_dtype_text(parsed[1])})"
    if kind == "Datetime":
        unit, zone = parsed[1], parsed[2]
        if zone is not None:
            return f"Datetime({unit}, {zone})"
        return "Datetime" if unit == "us" else f"Datetime({unit})"
    if kind == "Duration":
        return "Duration" if parsed[1] == "us" else f"Duration({parsed[1]})"
    if kind == "Decimal":
        return f"Decimal({parsed[1]}, {parsed[2]})"
    return str(kind)


def canonical_dtype(name: str) -> str:
    """The canonical spelling of a dtype name (``"List( Utf8 )"`` -> ``"List(String)"``,
    ``"Datetime(us)"`` -> ``"Datetime"``); what ``output_schema.dtype_name`` gives the
    polars dtype.

    Raises:
        ValueError: the name is not one of ``DTYPE_HELP``.
    """
    return _dtype_text(_parse_dtype(name))


def polars_dtype(name: str) -> Any:
    """The polars dtype a dtype name stands for (polars is imported only here).

    Raises:
        ValueError: the name is not one of ``DTYPE_HELP``.
    """
    import polars as pl

    def build(parsed: tuple[Any, ...]) -> Any:
        kind = parsed[0]
        if kind == "List":
            return pl.List(build(parsed[1]))
        if kind == "Datetime":
            return pl.Datetime(parsed[1], parsed[2])
        if kind == "Duration":
            return pl.Duration(parsed[1])
        if kind == "Decimal":
            return pl.Decimal(parsed[1], parsed[2])
        return getattr(pl, kind)()

    return build(_parse_dtype(name))


def canonical_output_schema(declared: dict[str, Any]) -> dict[str, str]:
    """``job.output_schema`` with every dtype name in its canonical spelling.

    Raises:
        ConfigError: one line naming the column and the dtype names accepted.
    """
    schema = {}
    for column, name in declared.items():
        try:
            schema[column] = canonical_dtype(str(name))
        except ValueError as exc:
            raise ConfigError(
                f"invalid config at 'job/output_schema/{column}': {exc}; expected a polars "
                f"dtype name: {DTYPE_HELP}"
            ) from None
    return schema
