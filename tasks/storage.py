"""Credentials and result storage for s3:// locations, from Prefect blocks or the environment.

Credentials reach the core only here: a flow parameter names a saved prefect-aws
``AwsCredentials`` block, and every process (flow or Dask worker) loads it from the Prefect API
itself. No secret is ever a flow or task parameter, so none is stored with a run, shown in the
UI or put in an artifact. Without a block, boto3's usual environment variables are used
(``AWS_ACCESS_KEY_ID``..., endpoint from ``VSRFLOW_S3_ENDPOINT``/``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

from vsrflow import storage
from vsrflow.locations import Locations
from vsrflow.storage import S3Config


@functools.cache
def _s3_config(credentials_block: str) -> S3Config:
    creds = AwsCredentials.load(credentials_block, _sync=True)
    secret = creds.aws_secret_access_key
    token = creds.aws_session_token
    client = creds.aws_client_parameters
    config = (client.config or {}) if client else {}
    return S3Config(
        endpoint_url=client.endpoint_url if client else None,
        region=creds.region_name,
        access_key_id=creds.aws_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        session_token=token.get_secret_value() if token else None,
        addressing_style=(config.get("s3") or {}).get("addressing_style", "path"),
    )


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
    bucket, prefix = storage.parse_s3_uri(storage.join_uri(work_dir, "results"))
    if credentials_block:
        credentials = AwsCredentials.load(credentials_block, _sync=True)
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
