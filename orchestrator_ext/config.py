"""The run configuration: validation against the shipped JSON schema, defaults, typed access.

The Snakefile, the jobs and the CLI read config the same way: ``load_config`` validates a
dict against the JSON schema, filling in the schema's defaults, checks what a schema cannot
express, and returns a frozen ``RunConfig``. It performs no I/O beyond reading the schema,
so it is safe at Snakefile parse time on every cluster job.

Validation is the recipe Snakemake's ``snakemake.utils.validate`` uses (jsonschema's
Draft 2020-12 validator extended to set defaults, from the jsonschema FAQ), called on
jsonschema directly: importing Snakemake for it cost every job about 0.2 s of start-up
(``docs/benchmarks.md``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator_ext.dtypes import canonical_output_schema
from orchestrator_ext.errors import ConfigError
from orchestrator_ext.location import is_remote

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"
#: Deprecated top-level keys -> the key that replaced them (same settings).
RENAMED_KEYS = {"checkpoint": "chunks"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """Where the items come from."""

    uri: str
    format: str
    id_column: str = "id"
    #: ``None``: ids as the file writes them (CSV: text); ``"string"`` or ``"integer"``.
    id_type: str | None = None


#: ``batching.max_items`` when neither it nor ``batching.target_seconds`` is set.
DEFAULT_MAX_ITEMS = 10000
#: The schema's ceiling of ``batching.max_items``: the bound of a batch sized by time
#: (``target_seconds``) when ``max_items`` is not set.
MAX_ITEMS_LIMIT = 1_000_000_000


@dataclass(frozen=True)
class BatchingSpec:
    """How items are cut into batches.

    ``max_items`` is always a number here: as given; ``DEFAULT_MAX_ITEMS`` when neither it
    nor ``target_seconds`` is set; ``MAX_ITEMS_LIMIT`` when only ``target_seconds`` is. With
    ``target_seconds`` the partition replaces it by the time-derived size, at most this
    (``sizing.batching_for``); ``max_bytes`` applies either way.
    """

    max_items: int = DEFAULT_MAX_ITEMS
    max_bytes: int | None = None
    weight_column: str | None = None
    #: Seconds of work one batch should take; None: batches are sized by ``max_items``.
    target_seconds: float | None = None
    #: Batches are row ranges of the input (``row_ranges``), not copies of its rows.
    row_ranges: bool = False

    @classmethod
    def from_config(cls, batching: dict[str, Any]) -> BatchingSpec:
        """The spec of a validated ``batching`` section (``resolve_batching`` applied)."""
        max_items = batching.get("max_items")
        return cls(
            max_items=MAX_ITEMS_LIMIT if max_items is None else max_items,
            max_bytes=batching.get("max_bytes"),
            weight_column=batching.get("weight_column"),
            target_seconds=batching.get("target_seconds"),
            row_ranges=bool(batching.get("row_ranges")),
        )


def resolve_batching(data: dict[str, Any]) -> None:
    """Check the ``batching`` section of a schema-valid config against the rest of it and
    fill in ``max_items`` (in place): ``DEFAULT_MAX_ITEMS`` unless ``target_seconds`` is
    set, when an unset ``max_items`` stays null (no bound but the time-derived size).

    Filled in here, not by the schema, so that a config without ``target_seconds`` keeps
    ``max_items: 10000`` in its resolved form, as before ``target_seconds`` existed.

    Raises:
        ConfigError: ``target_seconds`` is not finite, is given with ``weight_column``, or
            is longer than a batch job's wall time (``resources.runtime``).
    """
    batching = data["batching"]
    if batching.get("row_ranges"):
        _check_row_ranges(data)
    target = batching.get("target_seconds")
    if target is None:
        if batching.get("max_items") is None:
            batching["max_items"] = DEFAULT_MAX_ITEMS
        return
    if not math.isfinite(target):
        raise ConfigError(
            f"invalid config at 'batching/target_seconds': {target} is not a number of "
            "seconds; give the seconds of work one batch should take, e.g. 600"
        )
    if batching.get("weight_column") is not None:
        raise ConfigError(
            "invalid config: batching.target_seconds and batching.weight_column cannot be "
            "combined: sizing by time assumes the first items' cost per item holds for all, "
            "which a weight column says it does not; keep weight_column with max_items "
            "(batches = ceil(items / max_items)), or drop weight_column"
        )
    runtime = data["resources"]["runtime"]
    if target > runtime * 60:
        raise ConfigError(
            f"invalid config: batching.target_seconds ({target:g} s) is longer than a batch "
            f"job may run (resources.runtime: {runtime} minutes), so every batch would be "
            "stopped at its time limit; lower target_seconds or raise resources.runtime"
        )


def _check_row_ranges(data: dict[str, Any]) -> None:
    """``batching.row_ranges`` needs consecutive batches of local Parquet files: a range of
    rows is read from a file by its row groups; CSV, JSONL and S3 objects have none.

    Raises:
        ConfigError: naming the setting that does not fit.
    """
    source = data["input"]
    if source["format"] != "parquet" or is_remote(source["uri"]):
        raise ConfigError(
            "invalid config: batching.row_ranges needs a local Parquet input (input.format "
            f"is {source['format']}, input.uri is {source['uri']}); drop row_ranges to have "
            "the batches copied"
        )
    if data["batching"].get("weight_column") is not None:
        raise ConfigError(
            "invalid config: batching.row_ranges and batching.weight_column cannot be "
            "combined: batching by weight gathers items from anywhere in the input, and a "
            "row range holds consecutive rows; drop one of them"
        )


@dataclass(frozen=True)
class JobSpec:
    """The user's code, as ``module:callable`` references."""

    function: str
    mode: str = "batch"
    combine: str | None = None
    finalize: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: Column name -> canonical polars dtype name (``canonical_dtype``), in declared order;
    #: None: the first committed batch's schema is the run's (see ``process``).
    output_schema: dict[str, str] | None = None
    #: ``any``, or ``per_item``: exactly one output row per processed item, with its id.
    rows: str = "any"
    #: Calls at once in a batch job (item mode: items on a pool; batch mode: ctx.workers
    #: and polars' threads); the cores Snakemake reserves and Slurm gets (``threads``).
    workers: int = 1
    #: ``process`` (CPU-bound Python) or ``thread`` (calls that wait); item mode.
    pool: str = "process"

    @property
    def cores(self) -> int:
        """Cores a batch job needs: one per worker, but one for a pool of threads that
        wait (item mode, ``pool: thread``): they share it."""
        return 1 if self.mode == "item" and self.pool == "thread" else self.workers


@dataclass(frozen=True)
class MergeSpec:
    """Shape and kind of the merge tree."""

    fan_in: int = 16
    mode: str = "concat"


@dataclass(frozen=True)
class RetrySpec:
    """In-job retry of transient errors."""

    max_attempts: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 20.0


@dataclass(frozen=True)
class StateSpec:
    """Where task state is recorded."""

    backend: str = "sqlite"
    table: str | None = None
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True)
class ResourceSpec:
    """Slurm resources of a first attempt, and how they grow on resubmission."""

    mem_mb: int = 2000
    runtime: int = 60
    escalation_factor: float = 2.0
    max_mem_mb: int = 64000
    max_runtime: int = 1440

    def for_attempt(self, attempt: int) -> tuple[int, int]:
        """(mem_mb, runtime) of attempt ``attempt`` (1-based), escalated and capped."""
        scale = self.escalation_factor ** max(0, attempt - 1)
        return (
            min(int(self.mem_mb * scale), self.max_mem_mb),
            min(int(self.runtime * scale), self.max_runtime),
        )


@dataclass(frozen=True)
class ChunksSpec:
    """When a batch persists a finished chunk, for a retried attempt to resume after it
    (``chunks``)."""

    every_items: int | None = None
    every_seconds: float | None = None


@dataclass(frozen=True)
class ErrorRulesSpec:
    """Extra exception classes per category, checked before the built-in table."""

    transient: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    permanent: tuple[str, ...] = ()


@dataclass(frozen=True)
class FaultSpec:
    """Fault injection (tests and chaos drills); inert unless ``enabled``."""

    enabled: bool = False
    seed: int = 0
    transient_rate: float = 0.0
    permanent_ids: tuple[Any, ...] = ()
    permanent_batches: tuple[int, ...] = ()
    oom_batches: tuple[int, ...] = ()
    kill_batches: dict[int, int] = field(default_factory=dict)
    s3_throttle_rate: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration; ``raw`` keeps the dict (with defaults) it came from."""

    run_id: str
    output_root: str
    input: InputSpec
    batching: BatchingSpec
    job: JobSpec
    merge: MergeSpec
    max_dead_letter_fraction: float
    retry: RetrySpec
    state: StateSpec
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    chunks: ChunksSpec = field(default_factory=ChunksSpec)
    error_rules: ErrorRulesSpec = field(default_factory=ErrorRulesSpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def run_dir(self) -> str:
        """The run's folder (or S3 prefix): ``{output_root}/{run_id}``."""
        return f"{self.output_root.rstrip('/')}/{self.run_id}"

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of the validated config (defaults included)."""
        return config_sha256(self.raw)


def config_sha256(raw: dict[str, Any]) -> str:
    """Return the sha256 of a config dict in canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _schema_error_message(error: Exception) -> str:
    """Turn a jsonschema ValidationError into one line naming the key and the problem."""
    keys = [str(p) for p in getattr(error, "absolute_path", [])]
    if getattr(error, "validator", None) == "required":
        # "'run_id' is a required property" names the key but not where it belongs.
        missing = str(error.message).split("'")[1]  # type: ignore[attr-defined]
        key = ".".join([*keys, missing])
        return (
            f"invalid config: required key '{key}' is missing; every run names its run_id, "
            "input (uri, format) and job (function): see config/README.md"
        )
    path = "/".join(keys) or "(top level)"
    message = getattr(error, "message", str(error)).splitlines()[0]
    expected = getattr(error, "schema", {}).get("description")
    hint = f" (expected: {expected})" if expected and error.validator == "pattern" else ""  # type: ignore[attr-defined]
    return f"invalid config at '{path}': {message}{hint}"


def validate_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a config dict against the schema and return a copy with defaults filled in.

    Raises:
        ConfigError: naming the offending key and what was expected.
    """
    import jsonschema

    data = copy.deepcopy(dict(raw))
    _check_renamed_keys(data)
    try:
        _default_filling_validator().validate(data)
    except jsonschema.ValidationError as exc:
        raise ConfigError(_schema_error_message(exc)) from None
    _rename_keys(data)
    resolve_batching(data)
    _check_consistency(data)
    _check_output_root(data["output_root"])
    return data


def read_schema(path: Path) -> dict[str, Any]:
    """One of the package's YAML schemas, parsed with libyaml when PyYAML has it.

    The pure-Python parser took 40 ms on the config schema alone, an eighth of a job's
    start-up when jobs still validated their config (pyinstrument, docs/benchmarks.md).
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a safe loader


@functools.cache
def _default_filling_validator() -> Any:
    """The schema's validator, extended to fill in defaults as it validates."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    # JSON Schema counts 1.0 (and 1e30) as an integer; a batch size or a memory figure
    # that is a float is a typo to refuse, not a number to truncate.
    type_checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    schema = read_schema(SCHEMA_PATH)
    extended = validators.extend(
        Draft202012Validator, {"properties": set_defaults}, type_checker=type_checker
    )
    return extended(schema)


def _check_renamed_keys(data: dict[str, Any]) -> None:
    """Warn of a deprecated key (once per validation); refuse it beside its new name.

    Raises:
        ConfigError: both the deprecated key and the one that replaced it are given.
    """
    for old, new in RENAMED_KEYS.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(
                f"invalid config: both '{new}' and '{old}' are given; '{old}' is the "
                f"deprecated name of '{new}': keep only '{new}'"
            )
        logger.warning("config key '%s' is deprecated: call it '%s' (same settings)", old, new)


def _rename_keys(data: dict[str, Any]) -> None:
    """Move a deprecated key's settings (validated, defaults filled) to its new name; the
    schema validates the old key as the new one, so that errors name the key as given."""
    for old, new in RENAMED_KEYS.items():
        if old in data:
            data[new] = data.pop(old)


def _check_consistency(data: dict[str, Any]) -> None:
    """Checks a JSON schema cannot express: keys that only make sense together."""
    job, merge, state = data["job"], data["merge"], data["state"]
    if merge["mode"] == "reduce" and not job.get("combine"):
        raise ConfigError(
            "invalid config: merge.mode is 'reduce' but job.combine is not set; "
            "name an associative combine function as 'module:callable'"
        )
    if state["backend"] == "dynamodb" and not state.get("table"):
        raise ConfigError("invalid config: state.backend is 'dynamodb' but state.table is not set")
    if state["backend"] == "sqlite" and is_remote(data["output_root"]):
        raise ConfigError(
            "invalid config: output_root is in S3 but state.backend is 'sqlite'; use "
            "state: {backend: dynamodb, table: NAME} for runs in S3"
        )
    if data["input"]["format"] == "s3-keys" and not is_remote(data["input"]["uri"]):
        raise ConfigError("invalid config: input.format 's3-keys' needs an s3:// input.uri")
    declared = job.get("output_schema")
    if declared is not None:
        canonical_output_schema(declared)
        id_column = data["input"]["id_column"]
        if job.get("rows") == "per_item" and id_column not in declared:
            raise ConfigError(
                f"invalid config: job.rows is 'per_item' but job.output_schema has no column "
                f"{id_column!r} (input.id_column): every output row carries its item's id"
            )


def _check_output_root(output_root: str) -> None:
    """Refuse a local output_root that is a file or lies under one, before anything is
    written (the first job would otherwise end in NotADirectoryError)."""
    if is_remote(output_root):
        return
    path = Path(output_root)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is" if folder == path else f"lies under {str(folder)!r}, which is"
                raise ConfigError(
                    f"invalid config: output_root {output_root!r} {where} a file, not a "
                    "folder; point output_root at a folder (it is created if missing)"
                )
            return


def load_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a config dict and return it as a ``RunConfig``.

    Raises:
        ConfigError: the config does not match the schema or is inconsistent.
    """
    return run_config_from(validate_config(raw))


def run_config_from(data: dict[str, Any]) -> RunConfig:
    """A ``RunConfig`` from a config that ``validate_config`` already returned (defaults
    filled), without validating it again.

    For job processes handed the coordinator's validated config (``RunConfig.raw``): the
    schema check costs a job 60 ms of start-up (jsonschema's import, mostly), a fifth of it.
    """
    stale = [old for old, new in RENAMED_KEYS.items() if old in data and new in data]
    if stale:
        # The Snakefile's config, updated in place with the validated one
        # (``workflow.load_run_config``), still holds the deprecated key beside the new one:
        # the validated config is the one without it.
        data = {key: value for key, value in data.items() if key not in stale}
    return RunConfig(
        run_id=data["run_id"],
        output_root=data["output_root"],
        input=InputSpec(**data["input"]),
        batching=BatchingSpec.from_config(data["batching"]),
        job=_job_spec(data["job"]),
        merge=MergeSpec(**data["merge"]),
        max_dead_letter_fraction=data["tolerance"]["max_dead_letter_fraction"],
        retry=RetrySpec(**data["retry"]),
        state=StateSpec(**data["state"]),
        resources=ResourceSpec(**data["resources"]),
        chunks=ChunksSpec(**data["chunks"]),
        error_rules=ErrorRulesSpec(**{k: tuple(v) for k, v in data["errors"].items()}),
        faults=_fault_spec(data["faults"]),
        raw=data,
    )


def _job_spec(job: dict[str, Any]) -> JobSpec:
    declared = job.get("output_schema")
    if declared is None:
        return JobSpec(**job)
    return JobSpec(**{**job, "output_schema": canonical_output_schema(declared)})


def _fault_spec(faults: dict[str, Any]) -> FaultSpec:
    return FaultSpec(
        enabled=faults["enabled"],
        seed=faults["seed"],
        transient_rate=faults["transient_rate"],
        permanent_ids=tuple(faults["permanent_ids"]),
        permanent_batches=tuple(faults["permanent_batches"]),
        oom_batches=tuple(faults["oom_batches"]),
        # YAML mapping keys may arrive as ints or strings ("2": 500 from --config).
        kill_batches={int(k): int(v) for k, v in faults["kill_batches"].items()},
        s3_throttle_rate=faults["s3_throttle_rate"],
    )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict.

    Raises:
        ConfigError: the file is missing or is not a YAML mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    return data


def load_config_file(path: str | Path) -> RunConfig:
    """Read and validate a config file (the CLI's ``--configfile``)."""
    return load_config(read_config_file(path))
