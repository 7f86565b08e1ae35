"""The input fingerprint: any rewritten, added or removed input file changes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator_ext.config import InputSpec
from orchestrator_ext.errors import InputError
from orchestrator_ext.fingerprint import input_listing, listing_sha256


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.csv").write_text("id\n1\n")
    (tmp_path / "b.csv").write_text("id\n2\n")
    return tmp_path


def _fingerprint(folder: Path) -> str:
    return listing_sha256(input_listing(InputSpec(f"{folder}/*.csv", "csv")))


class TestInputListing:
    def test_lists_path_size_and_mtime_in_name_order(self, folder: Path) -> None:
        listing = input_listing(InputSpec(f"{folder}/*.csv", "csv"))
        assert [e["path"] for e in listing] == [f"{folder}/a.csv", f"{folder}/b.csv"]
        assert listing[0]["bytes"] == 5
        assert listing[0]["mtime_ns"] == os.stat(folder / "a.csv").st_mtime_ns

    def test_nothing_matches(self, tmp_path: Path) -> None:
        with pytest.raises(InputError, match="matches no file"):
            input_listing(InputSpec(f"{tmp_path}/*.csv", "csv"))


class TestFingerprint:
    def test_unchanged_input_same_fingerprint(self, folder: Path) -> None:
        assert _fingerprint(folder) == _fingerprint(folder)

    def test_rewritten_in_place_with_the_same_size(self, folder: Path) -> None:
        before = _fingerprint(folder)
        stat = os.stat(folder / "a.csv")
        (folder / "a.csv").write_text("id\n9\n")
        os.utime(folder / "a.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert _fingerprint(folder) != before

    def test_added_file(self, folder: Path) -> None:
        before = _fingerprint(folder)
        (folder / "c.csv").write_text("id\n3\n")
        assert _fingerprint(folder) != before

    def test_removed_file(self, folder: Path) -> None:
        before = _fingerprint(folder)
        (folder / "b.csv").unlink()
        assert _fingerprint(folder) != before
