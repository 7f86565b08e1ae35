"""A config file with a YAML syntax error is named, with its line, by snakemake itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from snakemake_interface_common.exceptions import WorkflowError

from orchestrator_ext.configfile_errors import install

try:
    from conftest import REPO, SNAKEMAKE
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.conftest import REPO, SNAKEMAKE

BROKEN = "run_id: x\ninput:\n  uri: [unclosed\n  format: csv\njob:\n  function: a:b\n"


class TestInstall:
    def test_wraps_the_loader_snakemake_settings_use_once(self) -> None:
        from snakemake.settings import types

        install()
        assert getattr(types.load_configfile, "names_the_file", False)
        assert install() is False  # already wrapped

    def test_a_good_file_loads_as_before(self, tmp_path: Path) -> None:
        from snakemake.settings import types

        install()
        path = tmp_path / "ok.yaml"
        path.write_text("run_id: x\nnested: {a: 1}\n")
        assert types.load_configfile(path) == {"run_id": "x", "nested": {"a": 1}}

    def test_a_broken_file_is_named_with_its_line(self, tmp_path: Path) -> None:
        from snakemake.settings import types

        install()
        path = tmp_path / "my-run.yaml"
        path.write_text(BROKEN)
        with pytest.raises(WorkflowError, match=r"my-run\.yaml is not valid YAML at line 4"):
            types.load_configfile(path)


def test_snakemake_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "my-run.yaml").write_text(BROKEN)
    result = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "workflow" / "Snakefile"),
         "--profile", str(REPO / "profiles" / "local"), "--configfile", "my-run.yaml", "-n"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "my-run.yaml is not valid YAML at line 4, column 9" in output
    assert "Traceback" not in output
