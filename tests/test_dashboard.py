"""The dashboard in a real headless Chromium, and no secret in anything a real run writes.

One real workflow run (Snakemake, local profile, SQLite state) with fault injection: two
items dead-lettered, batch 1 out of memory on its first attempt (resubmitted), and
recognisable fake AWS credentials in the environment. Then the CLI (status, errors, audit,
report, cost, iam-policy, manifest verify) runs against it as a user would.

- ``TestDashboardInChromium``: Debian's ``chromium`` loads the report from the file (no
  network: the page's CSP forbids every request), logs nothing to the console, renders every
  plot as SVG, and shows the numbers of the state store and the manifest.
- ``TestNoSecretLeaks``: no file under the run's working directory (run folder, logs,
  Snakemake's own metadata, the report) and no CLI output contains the fake credentials.

Chromium comes from ``tests/services/setup.sh chromium``; without it these tests fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import ORCHESTRATOR, base_config, run_snakemake, write_config

from orchestrator_ext.example_data import make_records
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.report import CSP, PLOT_IDS
from orchestrator_ext.state.sqlite import SqliteStateStore

pytestmark = pytest.mark.workflow

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY0ORCH3STR",
    "AWS_SECRET_ACCESS_KEY": "FAKE-SECRET-abc123-orchestrator-never-log-me-7f3e9d",
    "AWS_SESSION_TOKEN": "FAKE-TOKEN-def456-orchestrator-never-log-me-1a2b3c",
    "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": "AKIAFAKEKEY1ORCH3STR",
    "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "FAKE-SECRET-ghi789-storage-plugin-never-log-me",
}
N_ITEMS, MAX_ITEMS, BAD_IDS = 60, 10, [5, 23]
CLI_COMMANDS = [
    ["status"], ["status", "--json"], ["errors"], ["errors", "--json"], ["audit"],
    ["audit", "--json"], ["cost"], ["cost", "--json"], ["iam-policy"], ["manifest", "verify"],
]  # fmt: skip
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
             "source", "track", "wbr"}  # fmt: skip


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("Debian's chromium is not installed: run `tests/services/setup.sh chromium`")
    return binary


def render_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """Load ``page`` headless; return the rendered DOM and the browser console's lines."""
    cmd = [
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--no-first-run", "--no-default-browser-check",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000",
        "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


class PlotScanner(HTMLParser):
    """Collects, per plot div, the classes of its SVG elements and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.current: str | None = None
        self.current_depth = 0
        self.svg_classes: dict[str, list[str]] = {p: [] for p in PLOT_IDS}
        self.texts: dict[str, list[str]] = {p: [] for p in PLOT_IDS}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_TAGS:
            return
        self.depth += 1
        values = dict(attrs)
        if self.current is None and values.get("id") in PLOT_IDS:
            self.current, self.current_depth = values["id"], self.depth
        elif self.current is not None and tag == "svg":
            self.svg_classes[self.current].append(values.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            return
        if self.current is not None and self.depth == self.current_depth:
            self.current = None
        self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.current is not None and data.strip():
            self.texts[self.current].append(data.strip())


def summary_cells(dom: str) -> dict[str, str]:
    """``data-key`` -> cell text of the summary and manifest tables."""
    import re

    return dict(re.findall(r'data-key="([^"]+)">([^<]*)<', dom))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("dashboard")
    make_records(N_ITEMS, seed=5).write_parquet(tmp / "items.parquet")
    config = base_config(
        tmp,
        run_id="dash",
        batching={"max_items": MAX_ITEMS},
        tolerance={"max_dead_letter_fraction": 0.5},
        faults={"enabled": True, "permanent_ids": BAD_IDS, "oom_batches": [1]},
    )
    configfile = write_config(tmp / "config.yaml", config)
    outputs: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as env:
        for name, value in FAKE_CREDENTIALS.items():
            env.setenv(name, value)
        run = run_snakemake(tmp, configfile)
        outputs["snakemake"] = run.stdout + run.stderr
        report = tmp / "report.html"
        commands = [*CLI_COMMANDS, ["report", "-o", str(report)]]
        for args in commands:
            result = subprocess.run(
                [ORCHESTRATOR, *args, "--configfile", str(configfile)],
                capture_output=True, text=True, timeout=120, cwd=tmp, env=os.environ.copy(),
            )  # fmt: skip
            outputs[" ".join(args)] = result.stdout + result.stderr
            # iam-policy has nothing to grant for a local run: a one-line error, exit 2
            expected = 2 if args == ["iam-policy"] else 0
            assert result.returncode == expected, (args, result.stderr)
    layout = RunLayout(f"{config['output_root']}/{config['run_id']}")
    return {"tmp": tmp, "config": config, "layout": layout, "report": report, "outputs": outputs}


class TestDashboardInChromium:
    def test_console_check_catches_errors_and_network(self, tmp_path: Path) -> None:
        # the check below is only worth something if it sees what it looks for
        page = tmp_path / "bad.html"
        page.write_text(
            f'<html><head><meta http-equiv="Content-Security-Policy" content="{CSP}"></head>'
            '<body><img src="http://127.0.0.1:9/x.png"><script>console.error("boom");</script>'
            "</body></html>"
        )
        _, console = render_in_chromium(page, tmp_path / "profile")
        assert any("boom" in line for line in console)
        assert any("Content Security Policy" in line for line in console)

    def test_loads_without_console_errors_and_renders_every_plot(self, real_run, tmp_path):
        dom, console = render_in_chromium(real_run["report"], tmp_path / "profile")
        assert console == []
        scanner = PlotScanner()
        scanner.feed(dom)
        for plot_id in PLOT_IDS:
            assert "main-svg" in scanner.svg_classes[plot_id], f"{plot_id} did not render"
            assert scanner.texts[plot_id], f"{plot_id} shows no text"

    def test_numbers_match_the_state_store_and_manifest(self, real_run, tmp_path) -> None:
        dom, _ = render_in_chromium(real_run["report"], tmp_path / "profile")
        layout, config = real_run["layout"], real_run["config"]
        store = SqliteStateStore(layout.state_db, config["run_id"], create=False)
        try:
            tasks = store.tasks()
        finally:
            store.close()
        manifest = json.loads(Path(layout.manifest).read_text())
        batches = [t for t in tasks if t.kind == "batch"]
        cells = summary_cells(dom)
        assert cells["tasks"] == str(len(tasks))
        assert cells["batches_total"] == str(len(batches)) == str(N_ITEMS // MAX_ITEMS)
        assert cells["items_total"] == str(sum(t.items or 0 for t in batches))
        assert cells["items_dead_lettered"] == str(len(BAD_IDS))
        assert cells["status_SUCCEEDED"] == str(len(tasks))
        assert cells["manifest_items_in"] == str(manifest["items_in"]) == str(N_ITEMS)
        assert cells["manifest_items_processed"] == str(manifest["items_processed"])
        assert cells["manifest_final_sha256"] == manifest["final"]["sha256"]

        scanner = PlotScanner()
        scanner.feed(dom)
        attempts = {t.task_id: t.attempt for t in batches}
        assert attempts["batch-00001"] == 2  # out of memory once, then resubmitted
        once = sum(a == 1 for a in attempts.values())
        assert {str(once), "1"} <= set(scanner.texts["plot-attempts"])
        assert "Failed attempts by category: 1" in scanner.texts["plot-failures"]
        assert any(t.startswith(f"Dead letters: {len(BAD_IDS)} items") for t in
                   scanner.texts["plot-dead-letters"])  # fmt: skip
        tree_nodes = len(batches) + sum(t.kind in ("merge", "final") for t in tasks)
        assert f"SUCCEEDED ({tree_nodes})" in scanner.texts["plot-merge-tree"]
        assert any(t.startswith(f"Batch durations: {len(batches)} batches") for t in
                   scanner.texts["plot-durations"])  # fmt: skip


class TestNoSecretLeaks:
    def test_scanner_finds_a_planted_secret(self, tmp_path: Path) -> None:
        planted = tmp_path / "x.bin"
        planted.write_bytes(b"\x00" + FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode() + b"\x01")
        assert _leaks(tmp_path, {}) == [f"{planted}: AWS_SECRET_ACCESS_KEY"]

    def test_no_file_or_output_holds_a_credential(self, real_run) -> None:
        tmp: Path = real_run["tmp"]
        scanned = [p for p in tmp.rglob("*") if p.is_file()]
        names = {p.name for p in scanned}
        # the scan covers what the run wrote: state, manifest, logs, Snakemake's metadata
        assert {"state.sqlite", "manifest.json", "report.html", "config.yaml"} <= names
        assert any(p.suffix == ".log" and "process_batch" in str(p) for p in scanned)
        assert any(".snakemake" in p.parts for p in scanned)
        assert _leaks(tmp, real_run["outputs"]) == []


def _leaks(root: Path, outputs: dict[str, str]) -> list[str]:
    """Every (file or output, credential name) pair where the credential's value appears."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        found += [f"{path}: {n}" for n, v in FAKE_CREDENTIALS.items() if v.encode() in content]
    for command, text in outputs.items():
        found += [f"output of {command}: {n}" for n, v in FAKE_CREDENTIALS.items() if v in text]
    return found
