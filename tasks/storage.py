"""Credentials and result storage for s3:// locations, from Prefect blocks or the environment.

Credentials reach the core only here: a flow parameter names a saved prefect-aws
``AwsCredentials`` block, and every process (flow or Dask worker) loads it from the Prefect API
itself. No secret is ever a flow or task parameter, so none is stored with a run, shown in the
UI or put in an artifact. Without a block, boto3's usual environment variables are used
(``AWS_ACCESS_KEY_ID``..., endpoint from ``VSRFLOW_S3_ENDPOINT``/``AWS_ENDPOINT_URL_S3``).

The S3 client for a block is built by prefect-aws's own pieces, not by copying fields over:
``AwsCredentials.get_boto3_session()`` (keys, session token, ``profile_name``, an assumed
``assume_role_arn``) and ``aws_client_parameters.get_params_override()`` (endpoint, ``verify``
/ ``verify_cert_path``, ``use_ssl``, ``api_version``, the botocore ``config``). vsrflow's
botocore defaults (SigV4, path-style addressing, standard retries, timeouts) go underneath the
block's ``config``, so a block that says nothing still works with SeaweedFS/MinIO-style
servers and one that says something wins. ``AwsCredentials.get_s3_client()`` itself is not
called: its client cache is process-global and not fork-aware, and it would drop those
defaults; vsrflow.storage memoises the client per process instead.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vsrflow import storage
from vsrflow.locations import Locations
from vsrflow.storage import S3Config

if TYPE_CHECKING:  # prefect_aws costs ~0.35 s to import: only runs with S3 pay it
    from botocore.client import BaseClient
    from botocore.config import Config
    from prefect_aws import AwsCredentials


@dataclass(frozen=True)
class BlockClientFactory:
    """A :data:`vsrflow.storage.ClientFactory` for an ``AwsCredentials`` block.

    Hashable and equal by the block's fields (the block defines ``__hash__``), so one config
    per block keys one client per process; picklable with the block. The block, which holds
    secrets and prints the session token in its repr, stays out of ``repr``.
    """

    credentials: AwsCredentials = field(repr=False)

    def __call__(self, defaults: Config) -> BaseClient:
        block = self.credentials
        params = block.aws_client_parameters.get_params_override()
        params["config"] = storage.merge_botocore_config(defaults, params.get("config"))
        if isinstance(params.get("verify"), os.PathLike):  # verify_cert_path is a FilePath
            params["verify"] = os.fspath(params["verify"])
        if block.region_name is not None:
            params["region_name"] = block.region_name
        return block.get_boto3_session().client("s3", **params)


def s3_config_for_block(credentials: AwsCredentials, name: str | None = None) -> S3Config:
    """The S3Config whose client is built from ``credentials`` (a loaded or in-memory block).

    Endpoint, region and access key id are copied only to label messages (the key as its
    last 4 characters); ``name`` names the block in them.
    """
    label = f"AwsCredentials block {name!r}" if name else "the AwsCredentials block"
    return S3Config(
        endpoint_url=credentials.aws_client_parameters.endpoint_url,
        region=credentials.region_name,
        access_key_id=credentials.aws_access_key_id,
        client_factory=BlockClientFactory(credentials),
        credentials_source=label,
    )


class CredentialsBlockError(ValueError):
    """The ``credentials_block`` parameter names no usable AWS Credentials block."""


def load_credentials_block(name: str) -> AwsCredentials:
    """The saved AwsCredentials block ``name``, or an error that says which parameter to fix."""
    from prefect_aws import AwsCredentials

    try:
        return AwsCredentials.load(name, _sync=True)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
        raise CredentialsBlockError(
            f"credentials_block {name!r}: no AWS Credentials block of that name on this Prefect "
            "server. Create it (UI: Blocks > + > AWS Credentials, with the endpoint URL of an "
            "S3-compatible store under client parameters) or leave credentials_block empty to "
            "use the AWS_* environment of the machine that runs the job."
        ) from None


@functools.cache
def _s3_config(credentials_block: str) -> S3Config:
    return s3_config_for_block(load_credentials_block(credentials_block), credentials_block)


def locations_for(credentials_block: str | None) -> Locations:
    """Locations using the named AwsCredentials block, or the environment when ``None``."""
    return Locations(_s3_config(credentials_block) if credentials_block else None)


def result_storage_for(work_dir: str, credentials_block: str | None) -> Path | str:
    """Where Prefect persists batch results (the cross-run cache records): beside the chunks.

    Local work dir: ``<work_dir>/results``. S3 work dir: an ``S3Bucket`` block pointing at
    ``<work_dir>/results``, saved under a name derived from the location (Prefect needs a saved
    block so every worker can load it); it references the credentials block, or the
    environment's endpoint when there is none.
    """
    if not storage.is_s3_uri(work_dir):
        return Path(work_dir) / "results"
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    bucket, prefix = storage.parse_s3_uri(storage.join_uri(work_dir, "results"))
    if credentials_block:
        credentials = load_credentials_block(credentials_block)
    else:
        env = S3Config.from_env()
        credentials = AwsCredentials(
            region_name=env.region,
            aws_client_parameters=AwsClientParameters(
                endpoint_url=env.endpoint_url,
                config={
                    "s3": {"addressing_style": env.addressing_style},
                    "signature_version": "s3v4",
                },
            ),
        )
    digest = hashlib.sha256(f"{work_dir}|{credentials_block}".encode()).hexdigest()[:12]
    name = f"vsrflow-results-{digest}"
    S3Bucket(bucket_name=bucket, bucket_folder=prefix, credentials=credentials).save(
        name, overwrite=True, _sync=True
    )
    return f"s3-bucket/{name}"
