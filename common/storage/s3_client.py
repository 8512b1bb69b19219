"""The boto3 client an `s3://` storage uses, and its errors in the project's words.

Credentials come from boto3's own chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
a profile, an instance role); they are never read, kept or shown here. The endpoint
(`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, for MinIO and other S3-compatible
stores) and the region (`AWS_REGION` or `AWS_DEFAULT_REGION`) are read each time a
storage is opened, so a test or a worker gets the environment it was started with.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from common.exceptions import ConfigurationError, StorageError

MIB = 1 << 20
DEFAULT_PART_MIB = 8
MIN_PART_BYTES = 5 * MIB  # S3: every part but the last is at least 5 MiB


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None
    region: str = "us-east-1"
    addressing: str = "auto"
    part_size: int = DEFAULT_PART_MIB * MIB  # the first parts' size; later parts grow
    uploads: int = 2  # parts of one file sent at once (memory: this many parts + 1)
    timeout_s: float = 60.0
    attempts: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Options:
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError("AWS_ENDPOINT_URL must be an http:// or https:// URL")
            if parts.username or parts.password or parts.query or parts.fragment:
                # Never echo it: a credential or token inside the URL would be printed with it.
                raise ConfigurationError(
                    "AWS_ENDPOINT_URL must not carry credentials or a query; "
                    "use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )
        addressing = env.get("VECTOR_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
        if addressing not in ("auto", "path", "virtual"):
            raise ConfigurationError("VECTOR_S3_ADDRESSING_STYLE must be auto, path or virtual")
        try:
            part_mib = float(env.get("VECTOR_S3_PART_SIZE_MB") or DEFAULT_PART_MIB)
            uploads = int(env.get("VECTOR_S3_UPLOADS") or cls.uploads)
            timeout_s = float(env.get("VECTOR_S3_TIMEOUT") or cls.timeout_s)
        except ValueError:
            raise ConfigurationError(
                "VECTOR_S3_PART_SIZE_MB, VECTOR_S3_UPLOADS and VECTOR_S3_TIMEOUT must be numbers"
            ) from None
        if part_mib * MIB < MIN_PART_BYTES or part_mib > 1024:
            raise ConfigurationError(
                "VECTOR_S3_PART_SIZE_MB must be between 5 and 1024 (S3's smallest part is 5 MiB)"
            )
        if not 1 <= uploads <= 16 or timeout_s <= 0:
            raise ConfigurationError("VECTOR_S3_UPLOADS must be between 1 and 16, VECTOR_S3_TIMEOUT positive")
        return cls(
            endpoint=endpoint,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cls.region,
            addressing=addressing,
            part_size=int(part_mib * MIB),
            uploads=uploads,
            timeout_s=timeout_s,
        )


_lock = threading.Lock()


def s3_client(options: S3Options):
    """One client per process and options (boto3 clients are thread-safe, but a forked
    pool process must not share its parent's connections)."""
    with _lock:
        return _client(options, os.getpid())


@functools.lru_cache(maxsize=8)
def _client(options: S3Options, pid: int):
    config = botocore.config.Config(
        region_name=options.region,
        s3={"addressing_style": options.addressing},
        connect_timeout=min(options.timeout_s, 10),
        read_timeout=options.timeout_s,
        retries={"mode": "standard", "max_attempts": options.attempts},
        max_pool_connections=max(10, options.uploads * 4),
    )
    return boto3.session.Session().client("s3", endpoint_url=options.endpoint, config=config)


# S3's error codes, as an operator should read them.
_REASONS = {
    "InvalidAccessKeyId": "the access key is not known to the storage (check AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (check AWS_SECRET_ACCESS_KEY)",
    "AccessDenied": "access denied (the credentials lack a permission on this bucket or prefix)",
    "NoSuchBucket": "the bucket does not exist",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "EntityTooSmall": "a part was smaller than the storage's minimum part size",
    "NoSuchUpload": "the multipart upload no longer exists (aborted meanwhile)",
    "PreconditionFailed": "the object changed or appeared meanwhile",
    # A HEAD's answer has no body: only its status.
    "403": "forbidden (wrong credentials, or they lack a permission on this bucket or prefix)",
}


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


# A connection dropped while an answer's body streamed in.
LOST_MID_ANSWER = (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError)


def storage_error(location: str, doing: str, exc: BaseException) -> StorageError:
    """`exc` (a botocore error) as a `StorageError` naming the location and the step. Only
    the error code or the exception's class is kept: a message from a server or a
    library might quote a header, a signature or a URL with a token."""
    if isinstance(exc, StorageError):
        return exc
    code = error_code(exc)
    if code:
        reason = _REASONS.get(code, f"the storage answered {code[:60]}")
    elif isinstance(exc, botocore.exceptions.NoCredentialsError):
        reason = "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile or role)"
    elif isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError)):
        reason = "the storage endpoint cannot be reached"
    elif isinstance(exc, (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError)):
        reason = "the storage endpoint timed out"
    elif isinstance(exc, LOST_MID_ANSWER):
        reason = "the connection to the storage was lost mid-answer"
    else:
        reason = f"{type(exc).__name__}"
    return StorageError(f"{location}: {doing} failed: {reason}")


def is_missing(exc: BaseException) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NotFound")


def is_conflict(exc: BaseException) -> bool:
    return error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
