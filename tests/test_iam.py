"""Unit tests for orchestrator_ext.iam and ``orchestrator iam-policy``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import orchestrator_ext.state.dynamodb as dynamodb_module
from orchestrator_ext.cli import EXIT_USER_ERROR, main
from orchestrator_ext.config import load_config
from orchestrator_ext.iam import (
    STATE_ITEM_ACTIONS,
    STATE_TABLE_ACTIONS,
    PolicyError,
    build_policy,
    placeholders,
    validate_policy,
)


@pytest.fixture
def cluster_raw(make_config: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_config(
        run_id="run-7",
        output_root="s3://lab-bucket/projects/x",
        input={"uri": "s3://raw-bucket/incoming/2030-*.parquet", "format": "parquet"},
        state={"backend": "dynamodb", "table": "orchestrator-state", "region": "eu-west-1"},
    )


def _by_sid(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in policy["Statement"]}


class TestBuildPolicy:
    def test_scopes_every_statement(self, cluster_raw) -> None:
        policy = build_policy(load_config(cluster_raw), account="123456789012")
        statements = _by_sid(policy)
        assert policy["Version"] == "2012-10-17"
        assert statements["RunObjects"]["Resource"] == "arn:aws:s3:::lab-bucket/projects/x/run-7/*"
        assert "s3:PutObject" in statements["RunObjects"]["Action"]
        assert statements["RunListing"]["Resource"] == "arn:aws:s3:::lab-bucket"
        assert statements["RunListing"]["Condition"] == {
            "StringLike": {"s3:prefix": ["projects/x/run-7", "projects/x/run-7/*"]}
        }
        assert statements["InputObjects"] == {
            "Sid": "InputObjects", "Effect": "Allow", "Action": ["s3:GetObject"],
            "Resource": "arn:aws:s3:::raw-bucket/incoming/2030-*",
        }  # fmt: skip
        assert statements["InputListing"]["Condition"]["StringLike"]["s3:prefix"] == [
            "incoming/2030-", "incoming/2030-*",
        ]  # fmt: skip
        rows = statements["StateRows"]
        assert (
            rows["Resource"] == "arn:aws:dynamodb:eu-west-1:123456789012:table/orchestrator-state"
        )
        assert rows["Condition"] == {
            "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["run-7"]},
            "Null": {"dynamodb:LeadingKeys": "false"},
        }
        assert placeholders(policy) == []

    def test_no_wildcard_resource_or_action_anywhere(self, cluster_raw) -> None:
        policy = build_policy(load_config(cluster_raw), kms_key_arn="arn:aws:kms:eu-west-1:1:key/k")
        for statement in policy["Statement"]:
            assert statement["Resource"] != "*" and not statement["Resource"].endswith(":*")
            assert all("*" not in action for action in statement["Action"])
            assert statement["Effect"] == "Allow"
        assert _by_sid(policy)["KmsForBucket"]["Resource"] == "arn:aws:kms:eu-west-1:1:key/k"
        # the input is read-only
        input_actions = _by_sid(policy)["InputObjects"]["Action"]
        assert not any(a in input_actions for a in ("s3:PutObject", "s3:DeleteObject"))

    def test_placeholders_without_account_and_region(self, cluster_raw) -> None:
        cluster_raw["state"].pop("region")
        policy = build_policy(load_config(cluster_raw))
        assert (
            "arn:aws:dynamodb:REGION:ACCOUNT_ID:table/" in _by_sid(policy)["StateRows"]["Resource"]
        )
        assert placeholders(policy) == ["ACCOUNT_ID", "REGION"]

    def test_strict_list_drops_the_prefixless_listing(self, cluster_raw) -> None:
        config = load_config(cluster_raw)
        assert _by_sid(build_policy(config))["BucketCheck"]["Condition"] == {
            "Null": {"s3:prefix": "true"}
        }
        assert "BucketCheck" not in _by_sid(build_policy(config, strict_list=True))

    def test_local_files_with_dynamodb_state_grant_only_the_table(self, cluster_raw) -> None:
        cluster_raw["output_root"] = "/shared/runs"
        cluster_raw["input"] = {"uri": "/data/items.parquet", "format": "parquet"}
        sids = set(_by_sid(build_policy(load_config(cluster_raw))))
        assert sids == {"StateRows", "StateTable"}

    def test_local_run_has_nothing_to_grant(self, make_config) -> None:
        with pytest.raises(PolicyError, match="uses no AWS service"):
            build_policy(load_config(make_config()))

    @pytest.mark.parametrize("run_id", ["run*", "run?x", "run$x"])
    def test_wildcards_in_ids_are_refused(self, cluster_raw, run_id: str) -> None:
        cluster_raw["run_id"] = run_id
        try:
            config = load_config(cluster_raw)
        except Exception:  # the config schema may refuse it first; either way no policy
            return
        with pytest.raises(PolicyError, match="IAM wildcard"):
            build_policy(config)

    def test_bad_account_and_kms_key(self, cluster_raw) -> None:
        config = load_config(cluster_raw)
        with pytest.raises(PolicyError, match="12-digit"):
            build_policy(config, account="12345")
        with pytest.raises(PolicyError, match="one key's ARN"):
            build_policy(config, kms_key_arn="arn:aws:kms:*:*:key/*")

    def test_validate_policy_refuses_star(self) -> None:
        bad = {"Statement": [{"Sid": "x", "Effect": "Allow", "Action": ["s3:GetObject"],
                              "Resource": "*"}]}  # fmt: skip
        with pytest.raises(PolicyError, match="wildcard resource"):
            validate_policy(bad)


class TestCoversTheStateStore:
    """The DynamoDB actions granted are exactly those the state store's client calls need."""

    #: boto3 client method -> IAM actions it needs (transactions: per contained action).
    NEEDS = {
        "get_item": {"dynamodb:GetItem"},
        "query": {"dynamodb:Query"},
        "batch_write_item": {"dynamodb:BatchWriteItem"},
        "describe_table": {"dynamodb:DescribeTable"},
        "transact_write_items": set(),  # from the transaction items below
    }
    TRANSACT_ITEMS = {"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem",
                      "Delete": "dynamodb:DeleteItem",
                      "ConditionCheck": "dynamodb:ConditionCheckItem"}  # fmt: skip
    #: Used only by ``orchestrator init`` (an administrator), not by a run.
    ADMIN_ONLY = {"create_table", "get_waiter", "close"}

    def test_actions_match_the_calls(self) -> None:
        source = Path(dynamodb_module.__file__).read_text()
        calls = set(re.findall(r"client\.([a-z_]+)\(", source)) - {"get_paginator"}
        calls |= set(re.findall(r'get_paginator\("([a-z_]+)"\)', source))
        unknown = calls - set(self.NEEDS) - self.ADMIN_ONLY
        assert not unknown, f"new DynamoDB calls need an IAM review: {unknown}"
        needed = set().union(*(self.NEEDS[c] for c in calls if c in self.NEEDS))
        items = set(re.findall(r'"(Put|Update|Delete|ConditionCheck)":', source))
        needed |= {self.TRANSACT_ITEMS[k] for k in items}
        assert needed == set(STATE_ITEM_ACTIONS) | set(STATE_TABLE_ACTIONS)


class TestIamPolicyCommand:
    def test_prints_the_policy_and_names_placeholders(self, cluster_raw, tmp_path, capsys) -> None:
        configfile = tmp_path / "c.yaml"
        configfile.write_text(yaml.safe_dump(cluster_raw))
        assert main(["iam-policy", "--configfile", str(configfile)]) == 0
        captured = capsys.readouterr()
        policy = json.loads(captured.out)
        assert {s["Sid"] for s in policy["Statement"]} >= {"RunObjects", "StateRows"}
        assert "replace ACCOUNT_ID before use" in captured.err

    def test_account_and_region_options(self, cluster_raw, tmp_path, capsys) -> None:
        configfile = tmp_path / "c.yaml"
        configfile.write_text(yaml.safe_dump(cluster_raw))
        args = ["iam-policy", "--json", "--account", "210987654321", "--region", "us-west-2",
                "--configfile", str(configfile)]  # fmt: skip
        assert main(args) == 0
        captured = capsys.readouterr()
        assert "us-west-2:210987654321:table/orchestrator-state" in captured.out
        assert captured.err == ""

    def test_local_run_is_one_line(self, make_config, tmp_path, capsys) -> None:
        configfile = tmp_path / "c.yaml"
        configfile.write_text(yaml.safe_dump(make_config()))
        assert main(["iam-policy", "--configfile", str(configfile)]) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nothing to grant" in err[0]
