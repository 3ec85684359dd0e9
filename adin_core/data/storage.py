"""URIs to pyarrow filesystems: a local path, or `s3://bucket/prefix` on any S3-API endpoint.

S3 settings come from the standard AWS variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`). Missing credentials and an unreachable
endpoint are reported at once, naming the setting, instead of after minutes of retries or a lookup of cloud
instance metadata.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """A store that cannot be used; the message names the URI or setting."""


class StorageUnavailable(StorageError):
    """The store did not answer (endpoint or bucket unreachable): worth retrying, unlike a wrong setting."""


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    path: str  # path inside fs (bucket/prefix for S3, absolute for local)
    uri: str

    def join(self, *parts: str) -> "Location":
        path = "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])
        uri = "/".join([self.uri.rstrip("/"), *[p.strip("/") for p in parts]])
        return Location(self.fs, path, uri)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as fh:
            return fh.read()

    def _local_temp_copy(self, data: bytes) -> str:
        """`data` on disk, synced, under a temporary name beside the final one."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def write_bytes_atomic(self, data: bytes) -> None:
        """Whole-object write that never leaves a half-written file under the final name: a temporary name and
        a rename on local disks; S3 PUTs are atomic by themselves."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            os.replace(self._local_temp_copy(data), self.path)
        else:
            with self.fs.open_output_stream(self.path) as fh:
                fh.write(data)

    def write_bytes_if_absent(self, data: bytes) -> bool:
        """Like write_bytes_atomic, but never replaces an existing object; False when one was there. Atomic on
        local disks (a hard link fails on an existing name); on S3 the check and the PUT are separate requests,
        so two writers finishing within the same few milliseconds can still both succeed."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = self._local_temp_copy(data)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        if self.exists():
            return False
        self.write_bytes_atomic(data)
        return True


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def check_endpoint_reachable(endpoint: str, timeout: float = 3.0) -> None:
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        raise StorageError(f"AWS_ENDPOINT_URL={endpoint!r} is not a URL like http://127.0.0.1:9000")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise StorageUnavailable(f"S3 endpoint {endpoint} (AWS_ENDPOINT_URL) is unreachable: {exc}") from None


def patient_retry_strategy(budget_s: float) -> pafs.S3RetryStrategy:
    """The AWS SDK's default strategy (waits of 50 ms, 100 ms, … doubling) with enough attempts to span
    `budget_s`: for filesystems handed to code that does not retry by itself (Ray's own storage writes)."""
    attempts = 1
    while 0.025 * (2**attempts - 2) < budget_s:
        attempts += 1
    return pafs.AwsDefaultS3RetryStrategy(max_attempts=attempts)


class EnvS3FileSystem(pafs.S3FileSystem):
    """An S3FileSystem built from the AWS variables of the process it is made in, and rebuilt from those of the
    process it is unpickled in: its pickled form holds no credential, only the retry budget.

    Ray pickles a run's filesystem into the sweep's stored state (`tuner.pkl`, the searcher's state) and ships it
    to its controller and workers; pyarrow's own S3FileSystem pickles its access and secret keys, which then lay in
    clear in the sweep's bucket. A process that unpickles it needs the AWS variables itself (Ray's workers inherit
    a local Ray's environment; on a cluster, the nodes' own credentials or the job's runtime env give them). The SDK
    retries span `retry_budget_s` (None: 3 quick attempts; the caller retries or reports), also after pickling,
    which pyarrow's own pickling would drop."""

    def __init__(self, retry_budget_s: float | None = None) -> None:
        strategy = (
            pafs.AwsStandardS3RetryStrategy(max_attempts=3)
            if retry_budget_s is None
            else patient_retry_strategy(retry_budget_s)
        )
        super().__init__(retry_strategy=strategy, **_s3_settings())
        self.retry_budget_s = retry_budget_s

    def __reduce__(self):
        return (EnvS3FileSystem, (self.retry_budget_s,))


def _s3_settings() -> dict:
    """S3FileSystem's arguments from the AWS variables; StorageError names what is missing."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise StorageError(
            "s3:// storage needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_ENDPOINT_URL for a non-AWS endpoint)"
        )
    kwargs: dict = dict(
        access_key=key,
        secret_key=secret,
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        connect_timeout=5,
        request_timeout=30,
    )
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "http")
    return kwargs


def s3_filesystem(retry_budget_s: float | None = None) -> pafs.S3FileSystem:
    """The S3 filesystem of the AWS variables, once the endpoint answers (`EnvS3FileSystem`: retry_budget_s lets
    the SDK retry failed requests for about that long; default 3 quick attempts)."""
    _s3_settings()  # missing credentials first: the more useful message
    endpoint = s3_endpoint()
    if endpoint:
        check_endpoint_reachable(endpoint)
    return EnvS3FileSystem(retry_budget_s)


def resolve(uri: str, retry_budget_s: float | None = None) -> Location:
    """A URI (local path, file://, s3://bucket/prefix) as a filesystem and a path inside it."""
    if is_s3(uri):
        rest = uri[len("s3://") :].strip("/")
        if not rest:
            raise StorageError(f"{uri!r} names no bucket: use s3://bucket/prefix")
        fs = s3_filesystem(retry_budget_s)
        bucket = rest.split("/")[0]
        try:
            info = fs.get_file_info(bucket)
        except OSError as exc:
            raise StorageUnavailable(f"cannot reach bucket {bucket!r} of {uri}: {exc}") from None
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"bucket {bucket!r} of {uri} does not exist")
        return Location(fs, rest, "s3://" + rest)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(pafs.LocalFileSystem(), path, path)
