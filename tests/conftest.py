"""Shared fixtures: config factories, workflow runs, and the local AWS endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")
ORCHESTRATOR = str(VENV_BIN / "orchestrator")
MOTO_PORT = int(os.environ.get("MOTO_PORT", "5555"))

#: Fixtures of a service (the AWS endpoint, a moto server, the Slurm cluster): a test that
#: uses one, itself or through another fixture, is marked ``service`` (``make unit`` skips
#: those).
SERVICE_FIXTURES = frozenset({"moto_endpoint", "serial_moto_endpoint", "slurm_cluster"})
#: Parameters of fixtures that request a service only for that case, with
#: ``request.getfixturevalue`` (which collection cannot see): ``open_store["dynamodb"]``,
#: ``root["s3"]``. A test with one of these parameter values is marked ``service`` too.
SERVICE_PARAMS = frozenset({"dynamodb", "s3"})
#: Folders whose tests run the real commands on whole runs: marked ``workflow``.
WORKFLOW_FOLDERS = (REPO / "tests" / "acceptance",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by what they need, so that a new test is classified by its fixtures
    (``service``) or its folder (``workflow``) without marking it by hand."""
    for item in items:
        if _uses_service(item):
            item.add_marker(pytest.mark.service)
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            # One cluster for every test, some of which cancel its jobs or restart it: with
            # pytest-xdist (``make test``) they all run one after another on one worker,
            # while the other workers run the rest beside them.
            item.add_marker(pytest.mark.xdist_group("slurm"))
        if any(item.path.is_relative_to(folder) for folder in WORKFLOW_FOLDERS):
            item.add_marker(pytest.mark.workflow)


def _uses_service(item: pytest.Item) -> bool:
    if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return any(isinstance(value, str) and value in SERVICE_PARAMS for value in params)


@pytest.fixture(autouse=True)
def _service_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that reached a service without being marked ``service`` (it asked for
    the fixture at run time, under a parameter not in ``SERVICE_PARAMS``), in a run that
    selects by that marker (``make unit``), where it should not have run."""
    yield
    used = SERVICE_FIXTURES.intersection(request.fixturenames)
    selecting = "service" in (request.config.option.markexpr or "")
    if used and selecting and request.node.get_closest_marker("service") is None:
        pytest.fail(
            f"{request.node.nodeid} uses {', '.join(sorted(used))} but is not marked "
            "service: add the parameter that requests it to SERVICE_PARAMS in "
            "tests/conftest.py, or mark the test with pytest.mark.service",
            pytrace=False,
        )


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A small valid run config rooted in ``tmp_path`` (input at tmp_path/items.parquet)."""
    config: dict[str, Any] = {
        "run_id": "t",
        "output_root": str(tmp_path / "out"),
        "input": {"uri": str(tmp_path / "items.parquet"), "format": "parquet", "id_column": "id"},
        "batching": {"max_items": 100},
        "job": {
            "function": "orchestrator_ext.jobs.grouped_stats:partial",
            "combine": "orchestrator_ext.jobs.grouped_stats:combine",
            "finalize": "orchestrator_ext.jobs.grouped_stats:finalize",
        },
        "merge": {"fan_in": 3, "mode": "reduce"},
        "state": {"backend": "sqlite"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Factory: ``make_config(**overrides)`` -> a config dict for a run in tmp_path."""
    return lambda **overrides: base_config(tmp_path, **overrides)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a config dict as YAML."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(workdir: Path, configfile: Path, *extra: str) -> list[str]:
    """The command that runs the project's workflow with the local profile on
    ``configfile`` (``run_snakemake`` runs it; tests that disturb a run start it
    themselves)."""
    return [
        SNAKEMAKE,
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--profile", str(REPO / "profiles" / "local"),
        "--configfile", str(configfile),
        "--cores", "2",
        *extra,
    ]  # fmt: skip


def run_snakemake(
    workdir: Path, configfile: Path, *extra: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the project's workflow with the local profile on ``configfile``."""
    cmd = snakemake_command(workdir, configfile, *extra)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server speaking the S3 and DynamoDB HTTP APIs on 127.0.0.1 (reused if up)."""
    url = f"http://127.0.0.1:{MOTO_PORT}"
    process = None
    if not _port_open(MOTO_PORT):
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"moto-{MOTO_PORT}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - held by the server process
        process = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on port {MOTO_PORT}") from None
                time.sleep(0.2)
    yield url
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


def set_storage_env(mp: pytest.MonkeyPatch, dynamodb_endpoint: str, s3_endpoint: str) -> None:
    """AWS settings as a cluster user sets them: environment variables that sbatch exports
    to every job (the storage plugin's command-line options would not reach the jobs). S3
    goes through the plugin's ``SNAKEMAKE_STORAGE_S3_*`` variables, DynamoDB through
    boto3's own ``AWS_ENDPOINT_URL_DYNAMODB``; no ``AWS_ENDPOINT_URL``."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("SNAKEMAKE_STORAGE_S3_ENDPOINT_URL", s3_endpoint)
    mp.setenv("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "testing")
    mp.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", "testing")


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3's standard environment pointed at the local endpoint, with fake credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_endpoint


def wait_gone(pid: int, timeout_s: float, message: str) -> None:
    """Wait up to ``timeout_s`` for process ``pid`` to be gone (a zombie, dead but not yet
    reaped, is gone); fail with ``message``."""
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
