"""A least-privilege IAM policy for one run: its S3 prefix, its input, its state rows.

``build_policy`` returns the policy document (a dict) for the principal that runs the jobs
of one run (``snakemake``, its Slurm jobs, ``orchestrator status``). It grants:

- ``RunObjects``: read, write and delete objects under ``{output_root}/{run_id}/`` only
  (``arn:aws:s3:::bucket/prefix/run_id/*``); delete because Snakemake removes the outputs
  of a failed job before it is retried.
- ``RunListing``: ``s3:ListBucket`` on the bucket, only for listings whose ``s3:prefix`` is
  the run folder or lies under it.
- ``BucketCheck`` (unless ``strict_list``): ``s3:ListBucket`` for requests that carry *no*
  prefix. The storage plugin (``orchestrator-s3``, built on ``snakemake-storage-plugin-s3``)
  calls HeadBucket before its first upload to a bucket, and IAM authorises HeadBucket as
  ``s3:ListBucket`` without a prefix; without this statement the plugin takes the bucket
  for missing and tries to create it. The price: the principal can list the *names* (not
  the content) of every key in the bucket. Use a bucket per project, or ``strict_list``
  with a storage plugin that does not need it.
- ``InputObjects`` / ``InputListing``: read-only access to the input's objects and a
  prefix-limited listing, when the input is in S3.
- ``StateRows``: the DynamoDB item actions the state store uses (GetItem, Query, PutItem,
  UpdateItem, BatchWriteItem; transactions are authorised per contained action) on the
  table, only for items whose partition key is the run id (``dynamodb:LeadingKeys``,
  with a ``Null`` check so that a request without a key is not let through vacuously).
- ``StateTable``: DescribeTable (the store checks the table's layout).
- ``KmsForBucket``: encrypt/decrypt with the bucket's KMS key, when one is given.

No statement has a ``*`` resource; ``build_policy`` refuses ids with IAM wildcard characters,
which would widen the resources they are part of.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.location import is_remote
from orchestrator_ext.s3 import split_s3_uri

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig

POLICY_VERSION = "2012-10-17"
ACCOUNT_PLACEHOLDER = "ACCOUNT_ID"
REGION_PLACEHOLDER = "REGION"
#: Object actions of the run's own files.
RUN_OBJECT_ACTIONS = [
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:GetObject",
    "s3:ListMultipartUploadParts",
    "s3:PutObject",
]
INPUT_OBJECT_ACTIONS = ["s3:GetObject"]
#: DynamoDB actions of ``state.dynamodb`` (TransactWriteItems -> PutItem + UpdateItem).
STATE_ITEM_ACTIONS = [
    "dynamodb:BatchWriteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
]
STATE_TABLE_ACTIONS = ["dynamodb:DescribeTable"]
KMS_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey"]
_WILDCARDS = re.compile(r"[*?$]")
_ACCOUNT = re.compile(r"^(\d{12}|[A-Z_]+)$")


class PolicyError(OrchestratorError):
    """Raised when a least-privilege policy cannot be built for the run as configured."""


def _check_literal(what: str, value: str) -> None:
    if _WILDCARDS.search(value):
        raise PolicyError(
            f"{what} {value!r} holds an IAM wildcard or variable character (* ? $), which "
            "would widen the policy beyond this run; rename it"
        )


def input_prefix(uri: str) -> tuple[str, str]:
    """(bucket, key prefix) the input reads from: the literal part before any glob."""
    from orchestrator_ext.s3 import glob_prefix, split_s3_uri

    bucket, key = split_s3_uri(uri)
    return bucket, glob_prefix(key)


def build_policy(
    config: RunConfig,
    account: str = ACCOUNT_PLACEHOLDER,
    region: str | None = None,
    partition: str = "aws",
    kms_key_arn: str | None = None,
    strict_list: bool = False,
) -> dict[str, Any]:
    """The policy document for one run (see the module docstring for each statement).

    Args:
        config: the run config (output_root, run_id, input.uri, state).
        account: the AWS account id of the table (12 digits) or a placeholder.
        region: the table's region; default ``state.region``, else a placeholder.
        partition: the AWS partition (``aws``, ``aws-cn``, ``aws-us-gov``).
        kms_key_arn: the bucket's KMS key, if objects are encrypted with SSE-KMS.
        strict_list: leave out ``BucketCheck`` (see the module docstring).

    Raises:
        PolicyError: the run uses no AWS service, or an id holds wildcard characters.
    """
    if not _ACCOUNT.match(account):
        raise PolicyError(f"--account must be a 12-digit AWS account id, got {account!r}")
    _check_literal("run_id", config.run_id)
    statements: list[dict[str, Any]] = []
    if is_remote(config.output_root):
        bucket, prefix = split_s3_uri(config.output_root)
        prefix = prefix.strip("/")
        _check_literal("output_root", config.output_root)
        run_prefix = f"{prefix}/{config.run_id}" if prefix else config.run_id
        statements.append(
            _statement(
                "RunObjects", RUN_OBJECT_ACTIONS, f"arn:{partition}:s3:::{bucket}/{run_prefix}/*"
            )
        )
        statements.append(
            _statement(
                "RunListing", ["s3:ListBucket"], f"arn:{partition}:s3:::{bucket}",
                {"StringLike": {"s3:prefix": [run_prefix, f"{run_prefix}/*"]}},
            )
        )  # fmt: skip
        if not strict_list:
            statements.append(
                _statement(
                    "BucketCheck", ["s3:ListBucket"], f"arn:{partition}:s3:::{bucket}",
                    {"Null": {"s3:prefix": "true"}},
                )
            )  # fmt: skip
    if is_remote(config.input.uri):
        bucket, prefix = input_prefix(config.input.uri)
        _check_literal("input bucket", bucket)
        statements.append(
            _statement(
                "InputObjects", INPUT_OBJECT_ACTIONS, f"arn:{partition}:s3:::{bucket}/{prefix}*"
            )
        )
        statements.append(
            _statement(
                "InputListing", ["s3:ListBucket"], f"arn:{partition}:s3:::{bucket}",
                {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"] if prefix else ["*"]}},
            )
        )  # fmt: skip
    if config.state.backend == "dynamodb":
        table = config.state.table or ""
        _check_literal("state.table", table)
        region = region or config.state.region or REGION_PLACEHOLDER
        table_arn = f"arn:{partition}:dynamodb:{region}:{account}:table/{table}"
        statements.append(
            _statement(
                "StateRows", STATE_ITEM_ACTIONS, table_arn,
                {
                    "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [config.run_id]},
                    "Null": {"dynamodb:LeadingKeys": "false"},
                },
            )
        )  # fmt: skip
        statements.append(_statement("StateTable", STATE_TABLE_ACTIONS, table_arn))
    if kms_key_arn:
        if not kms_key_arn.startswith(f"arn:{partition}:kms:") or _WILDCARDS.search(kms_key_arn):
            raise PolicyError(
                f"--kms-key-arn must be one key's ARN (arn:{partition}:kms:REGION:ACCOUNT:key/ID)"
            )
        statements.append(_statement("KmsForBucket", KMS_ACTIONS, kms_key_arn))
    if not statements:
        raise PolicyError(
            f"run {config.run_id} uses no AWS service (local output_root and input, sqlite "
            "state): there is nothing to grant"
        )
    policy = {"Version": POLICY_VERSION, "Statement": statements}
    validate_policy(policy)
    return policy


def _statement(
    sid: str, actions: list[str], resource: str, condition: dict[str, Any] | None = None
) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions),
        "Resource": resource,
    }
    if condition:
        statement["Condition"] = condition
    return statement


def validate_policy(policy: dict[str, Any]) -> None:
    """Check the least-privilege invariants this module promises.

    Raises:
        PolicyError: a statement allows ``*`` actions or resources, or is not an Allow.
    """
    for statement in policy["Statement"]:
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            if resource in ("*", "arn:aws:s3:::*") or resource.endswith(":*"):
                raise PolicyError(f"statement {statement['Sid']} has a wildcard resource")
        if any(action.endswith("*") for action in statement["Action"]):
            raise PolicyError(f"statement {statement['Sid']} has a wildcard action")
        if statement["Effect"] != "Allow":
            raise PolicyError(f"statement {statement['Sid']} is not an Allow")


def placeholders(policy: dict[str, Any]) -> list[str]:
    """The placeholders left in a policy (``ACCOUNT_ID``, ``REGION``) to replace before use."""
    text = repr(policy)
    return [p for p in (ACCOUNT_PLACEHOLDER, REGION_PLACEHOLDER) if f":{p}:" in text]
