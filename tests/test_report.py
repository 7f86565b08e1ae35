"""Unit tests for the package orchestrator_ext.report and ``orchestrator report`` (no
browser; see test_dashboard.py for the page rendered in Chromium).

One class per module of the package: ``TestCollect`` (data.py), ``TestFigures``
(figures.py), ``TestHtml`` and ``TestTemplate`` (render.py, dashboard.html.j2),
``TestWriteReport`` (write.py), then the CLI command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ops_fixtures import BAD_IDS, N_ITEMS, make_finished_run, open_store

from orchestrator_ext.cli import EXIT_USER_ERROR, main
from orchestrator_ext.report import (
    CSP,
    PLOT_IDS,
    build_figures,
    collect_report_data,
    merge_tree_nodes,
    render_html,
    summary_values,
    write_report_html,
)


@pytest.fixture
def finished(tmp_path: Path, make_config: Callable[..., dict[str, Any]]):
    return make_finished_run(tmp_path, make_config)


@pytest.fixture
def data(finished):
    _, config = finished
    store = open_store(config)
    try:
        yield collect_report_data(config, store)
    finally:
        store.close()


class TestCollect:
    def test_numbers_come_from_the_store_and_manifest(self, data) -> None:
        values = summary_values(data)
        assert values["tasks"] == 14 and values["batches_total"] == 8
        assert values["items_total"] == N_ITEMS
        assert values["items_dead_lettered"] == len(BAD_IDS)
        assert values["retried_tasks"] == 2
        assert values["status_SUCCEEDED"] == 14
        assert values["manifest_items_in"] == N_ITEMS
        assert values["manifest_items_dead_lettered"] == len(BAD_IDS)
        assert data.dead_by_category == {"permanent": 3}
        assert data.dead_source == "2 dead-letter files"  # batches 0 and 3
        assert data.notes == []

    def test_elapsed_of_a_finished_run_is_not_measured_to_now(
        self, finished, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from datetime import datetime, timedelta

        import orchestrator_ext.status as status_module
        from orchestrator_ext.history import parse_time
        from orchestrator_ext.status import format_duration

        class HourLater(datetime):
            """The report is written an hour after the run finished."""

            @classmethod
            def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
                return datetime.now(tz) + timedelta(hours=1)

        monkeypatch.setattr(status_module, "datetime", HourLater)
        _, config = finished
        store = open_store(config)
        try:
            tasks = store.tasks()
            data = collect_report_data(config, store)
        finally:
            store.close()
        first = min(parse_time(t.started_at) for t in tasks if t.kind == "batch")
        last = max(parse_time(t.finished_at) for t in tasks)
        assert data.status is not None and data.status.finished
        assert data.status.elapsed_s == pytest.approx((last - first).total_seconds(), abs=1e-3)
        assert data.status.elapsed_s < 600, "measured to now, an hour after the run"
        assert summary_values(data)["elapsed"] == format_duration(data.status.elapsed_s)

    def test_dead_letters_from_task_rows_without_files_or_manifest(self, finished) -> None:
        import shutil

        from orchestrator_ext.layout import RunLayout

        _, config = finished
        layout = RunLayout(config.run_dir)
        shutil.rmtree(Path(layout.dead_letter(0)).parent)
        Path(layout.manifest).unlink()
        store = open_store(config)
        try:
            data = collect_report_data(config, store)
        finally:
            store.close()
        # keyed like the files and the manifest key a batch: its number, not its task id
        assert data.dead_by_batch == {"00000": 2, "00003": 1}
        assert data.dead_source == "state store (no categories)"
        assert data.dead_by_category == {}

    def test_missing_store_and_manifest_are_notes(self, tmp_path, make_config) -> None:
        from orchestrator_ext.config import load_config

        config = load_config(make_config(run_id="nothing"))
        data = collect_report_data(config, None)
        assert any("no state store" in n for n in data.notes)
        assert any(n.startswith("no manifest yet") for n in data.notes)


class TestFigures:
    def test_one_figure_per_plot_id_with_the_right_numbers(self, data) -> None:
        figures = build_figures(data)
        assert tuple(figures) == PLOT_IDS
        attempts = figures["plot-attempts"].data[0]
        assert list(attempts.x) == ["1", "2"] and list(attempts.y) == [6, 2]
        failures = figures["plot-failures"].data[0]
        assert dict(zip(failures.x, failures.y, strict=True)) == {
            "transient": 1, "resource": 1, "permanent": 0,
        }  # fmt: skip
        dead = figures["plot-dead-letters"].data
        assert list(dead[0].y) == [3] and dict(zip(dead[1].x, dead[1].y, strict=True)) == {
            "00000": 2, "00003": 1,
        }  # fmt: skip
        durations = figures["plot-durations"].data[0]
        assert len(durations.x) == 8
        cumulative = figures["plot-throughput"].data[0].y
        assert cumulative[-1] == N_ITEMS - len(BAD_IDS)

    def test_batches_finishing_at_the_same_instant(self, data) -> None:
        # Sorting (time, task row) pairs compared the rows on a tie: a TypeError that failed
        # the dashboard job of a run whose batches ended in the same microsecond.
        from dataclasses import replace

        at = "2026-12-01T15:03:31.000001+00:00"
        data.spans = [
            replace(s, ended_at=at) if s.outcome == "SUCCEEDED" else s for s in data.spans
        ]
        cumulative = build_figures(data)["plot-throughput"].data[0].y
        assert cumulative[-1] == N_ITEMS - len(BAD_IDS)

    def test_merge_tree_shape_and_status(self) -> None:
        statuses = {"batch-00000": "SUCCEEDED", "merge-L1-part-00001": "RUNNING"}
        nodes = merge_tree_nodes(5, 2, statuses)
        # levels 5, 3, 2, 1
        assert [n["level"] for n in nodes] == [0] * 5 + [1] * 3 + [2] * 2 + [3]
        by_id = {n["task_id"]: n for n in nodes}
        assert by_id["final"]["level"] == 3 and by_id["final"]["parent"] is None
        assert by_id["merge-L1-part-00001"] == {
            "level": 1, "index": 1, "task_id": "merge-L1-part-00001", "x": 2.5,
            "status": "RUNNING", "parent": 0,
        }  # fmt: skip
        assert by_id["batch-00004"]["parent"] == 2 and by_id["batch-00004"]["status"] == "PENDING"
        assert by_id["batch-00000"]["status"] == "SUCCEEDED"


class TestHtml:
    def test_self_contained_and_offline(self, data) -> None:
        page = render_html(data)
        assert f'content="{CSP}"' in page and "default-src 'none'" in CSP
        assert not re.search(r"<script[^>]+src=", page)
        assert not re.search(r"<link[^>]+href=", page)
        for plot_id in PLOT_IDS:
            assert f'id="{plot_id}"' in page

    def test_messages_are_escaped(self, data) -> None:
        data.tasks[0].status = type(data.tasks[0].status)("DEAD")
        data.tasks[0].error_message = "</script><img src=x onerror=alert(1)>"
        page = render_html(data)
        assert "<img src=x" not in page
        assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page

    def test_script_in_run_id_error_and_notes_is_escaped(self, data) -> None:
        # a run id and an error message are user data: neither may open a tag in the page
        data.run_id = "<script>alert('run')</script>"
        data.run_dir = "/runs/<script>dir</script>"
        data.tasks[0].status = type(data.tasks[0].status)("FAILED")
        data.tasks[0].error_type = "<script>Type</script>"
        data.tasks[0].error_message = '<script>alert("error")</script>'
        data.notes = ["<script>note</script> & more"]
        page = render_html(data)
        # the page's only scripts are plotly.js and the plots' (no value starts one)
        assert page.count("<script") == 1 + len(PLOT_IDS)
        assert "<title>Run &lt;script&gt;alert(&#39;run&#39;)&lt;/script&gt;</title>" in page
        assert "<h1>Run &lt;script&gt;alert(&#39;run&#39;)&lt;/script&gt;</h1>" in page
        assert 'data-key="run_id">&lt;script&gt;alert(&#39;run&#39;)&lt;/script&gt;<' in page
        assert (
            "<td>&lt;script&gt;Type&lt;/script&gt;: &lt;script&gt;alert(&#34;error&#34;)"
            "&lt;/script&gt;</td>"
        ) in page
        assert "/runs/&lt;script&gt;dir&lt;/script&gt;/logs/" in page
        assert "<li>&lt;script&gt;note&lt;/script&gt; &amp; more</li>" in page

    def test_more_failures_than_shown_are_counted(self, data) -> None:
        from dataclasses import replace

        from orchestrator_ext.report.render import MAX_FAILURES_SHOWN

        dead = type(data.tasks[0].status)("DEAD")
        data.tasks = [
            replace(data.tasks[0], task_id=f"batch-{i:05d}", status=dead)
            for i in range(MAX_FAILURES_SHOWN + 7)
        ]
        page = render_html(data)
        assert f"<h2>Failing tasks ({MAX_FAILURES_SHOWN + 7})</h2>" in page
        assert page.count("<td>DEAD</td>") == MAX_FAILURES_SHOWN
        assert "<p>7 more: <code>orchestrator errors</code></p>" in page

    def test_a_run_without_anything_says_so(self, tmp_path, make_config) -> None:
        from orchestrator_ext.config import load_config

        page = render_html(collect_report_data(load_config(make_config(run_id="n")), None))
        assert "<h2>Failing tasks</h2><p>none</p>" in page
        assert "<p>not written yet: the run has not finished</p>" in page
        assert 'data-key="run_id">n<' in page and 'data-key="tasks"' not in page


class TestTemplate:
    def test_autoescape_is_on_for_the_template(self) -> None:
        from orchestrator_ext.report.render import TEMPLATE, environment

        env = environment()
        assert env.is_async is False and callable(env.autoescape)
        assert env.autoescape(TEMPLATE) is True

    def test_only_our_own_markup_is_marked_safe(self) -> None:
        # |safe turns escaping off: only plotly's output and our CSP may have it, each with
        # a comment saying why (a value from the run marked safe would be an injection)
        from orchestrator_ext.report.render import TEMPLATE

        text = (Path(__file__).parents[1] / "orchestrator_ext" / "report" / TEMPLATE).read_text()
        marked = list(re.finditer(r"\{\{\s*(\w+)\s*\|\s*safe", text))
        assert sorted(m.group(1) for m in marked) == ["csp", "plot", "plotlyjs"]
        for match in marked:
            before = text[: match.start()]
            assert before.rfind("#}") > before.rfind("}}"), "a |safe without a comment why"

    def test_a_missing_value_is_an_error(self) -> None:
        import jinja2

        from orchestrator_ext.report.render import TEMPLATE, environment

        with pytest.raises(jinja2.UndefinedError, match="csp"):
            environment().get_template(TEMPLATE).render()


class TestWriteReport:
    def test_raw_config_opens_its_own_store(self, finished, tmp_path) -> None:
        _, config = finished
        path = write_report_html(dict(config.raw), tmp_path / "sub" / "report.html")
        page = path.read_text()
        assert 'data-key="tasks">14<' in page and "Failing tasks" in page

    def test_without_a_store_it_still_writes(self, tmp_path, make_config) -> None:
        raw = make_config(run_id="never-ran")
        path = write_report_html(raw, tmp_path / "r.html")
        assert "no state store could be opened" in path.read_text()


class TestReportCommand:
    def test_default_output_in_the_run_folder(self, finished, capsys) -> None:
        configfile, config = finished
        assert main(["report", "--json", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["report"] == f"{config.run_dir}/report.html"
        assert data["plots"] == list(PLOT_IDS) and data["bytes"] > 1_000_000

    def test_output_option(self, finished, tmp_path, capsys) -> None:
        configfile, _ = finished
        out = tmp_path / "dash.html"
        assert main(["report", "-o", str(out), "--configfile", str(configfile)]) == 0
        assert out.exists() and "needs no network" in capsys.readouterr().out

    def test_run_not_started_is_one_line(self, tmp_path, make_config, capsys) -> None:
        import yaml

        configfile = tmp_path / "c.yaml"
        configfile.write_text(yaml.safe_dump(make_config(run_id="none")))
        assert main(["report", "--configfile", str(configfile)]) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no state store at" in err[0]
