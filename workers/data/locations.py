"""Where a data source lives: a local path, or a URI of object storage or a shared file
system (`s3://`, `gs://`, `abfs://`, `hdfs://`, `file://`), opened through pyarrow.fs.

Every process that reads a source (the driver for metadata, each shard worker for its
rows) calls `locate` itself: nothing but the URI travels between them. Endpoints,
regions and credentials come only from the process's environment and the provider's
default chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
`AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores, instance
roles; `GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_*`; Hadoop's own settings),
never from the config: a URI that carries a user, password or query is refused.

`explain` turns pyarrow's storage errors into a few words that name no secret.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from trainer.errors import DataError, one_line

SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# S3: a dead endpoint fails in about a second (pyarrow's default retries a refused
# connection for 6 s and waits minutes for a black hole); reads still retry a few times.
S3_CONNECT_TIMEOUT = 5.0
S3_ATTEMPTS = 3
# GCS: pyarrow's default retries a failing request (no credentials, a dead endpoint)
# for 15 minutes; bounded here as S3's attempts are.
GCS_RETRY_SECONDS = 5.0


def is_uri(spec: str) -> bool:
    return bool(URI.match(spec))


@dataclass
class Location:
    """A file or folder: the file system, the path on it, and the name shown to users
    (the local absolute path, or the URI exactly as given: it holds no secret)."""

    fs: pafs.FileSystem
    path: str
    name: str
    remote: bool

    def join(self, relative: str) -> tuple[str, str]:
        """(path on the file system, name to show) of a file below this folder."""
        sep = "/" if self.remote else os.sep
        return self.path.rstrip("/") + "/" + relative, self.name.rstrip("/" + os.sep) + sep + relative


def locate(spec: str) -> Location:
    """A local path (`~` expanded) or a URI -> its Location. Opening a file system
    makes no request yet (S3's region is looked up when not in the environment)."""
    if not is_uri(spec):
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(spec)),
                        os.path.abspath(os.path.expanduser(spec)), False)
    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise DataError(f"data.source: unknown URI scheme {scheme + '://'!r} (expected one of "
                        f"{', '.join(s + '://' for s in SCHEMES)})")
    # Azure names its container where a URL has a user (abfs://CONTAINER@ACCOUNT.dfs...).
    container = parts.username if scheme in ("abfs", "abfss") and parts.username else None
    where = parts.netloc.rsplit("@", 1)[-1]  # host[:port]
    host = f"{container}@{where}" if container else where
    shown = f"{scheme}://{host}{parts.path}"  # without password, user or query
    if parts.password or (parts.username and not container):
        raise DataError(f"data.source: {shown} carries credentials; give them through the environment "
                        "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ...), never in the config")
    if parts.query or parts.fragment:
        raise DataError(f"data.source: {shown}: no ?options in a data URI; the endpoint and region "
                        "come from the environment (AWS_ENDPOINT_URL, AWS_REGION)")
    if scheme in ("s3", "gs", "gcs") and not parts.netloc:  # else the store's whole listing is read
        raise DataError(f"data.source: {shown} names no bucket (expected {scheme}://BUCKET/KEY)")
    if scheme == "file":  # a local path (an NFS mount...): the local checks apply
        return Location(pafs.LocalFileSystem(), parts.path, spec, False)
    if scheme == "s3":
        check_s3_endpoint(shown)
    try:
        if scheme == "s3":
            fs, path = s3_filesystem(parts.netloc), parts.netloc + parts.path
        elif scheme in ("gs", "gcs"):
            fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=GCS_RETRY_SECONDS))
            path = parts.netloc + parts.path
        else:
            fs, path = pafs.FileSystem.from_uri(spec)
    except (OSError, ValueError, ImportError) as err:  # ArrowInvalid is a ValueError
        # S3 asks for the bucket's region here; the others fail only to set up (no JVM
        # for HDFS, ...), which pyarrow says in a first line worth showing as it is.
        why = explain(err) if scheme == "s3" else f"cannot open its file system ({_scrub(one_line(err, 100))})"
        raise DataError(f"data.source: {shown}: {why}") from None
    return Location(fs, path.rstrip("/") or path, spec, True)


ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the first one set counts


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the environment names (as the AWS CLI and SDKs read it)."""
    return next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)


def check_s3_endpoint(shown: str) -> None:
    """An endpoint is a URL: without its scheme pyarrow would try https:// on it and
    report a store it cannot reach, whatever the real mistake."""
    endpoint = s3_endpoint()
    if not endpoint or re.match(r"^https?://", endpoint, re.IGNORECASE):
        return
    name = next(v for v in ENDPOINT_VARIABLES if os.environ.get(v))
    value = _scrub(endpoint if "://" in endpoint else "//" + endpoint).lstrip("/")
    if "://" not in endpoint:
        raise DataError(f"data.source: {shown}: {name}={value} has no scheme; write http://{value} "
                        f"or https://{value}")
    raise DataError(f"data.source: {shown}: {name}={value} must start with http:// or https://")


def s3_filesystem(bucket: str) -> pafs.S3FileSystem:
    """An S3 file system configured from the environment only.

    Built here rather than by `FileSystem.from_uri`, which takes AWS_ENDPOINT_URL too,
    to give a dead endpoint a short connect timeout and few retries (see above).
    Without a region in the environment, the bucket's own region is looked up, as
    from_uri does (not against a custom endpoint, which has no regions to speak of).
    """
    options = {"connect_timeout": S3_CONNECT_TIMEOUT,
               "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS)}
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        url = urlsplit(endpoint)
        options["endpoint_override"] = url.netloc + url.path.rstrip("/") if url.scheme else endpoint
        if url.scheme:
            options["scheme"] = url.scheme
        options["region"] = region or "us-east-1"
    elif region:
        options["region"] = region
    else:
        options["region"] = pafs.resolve_s3_region(bucket)
    return pafs.S3FileSystem(**options)


# What pyarrow's storage errors say, and the few words we say instead.
ERROR_WORDS = [
    (("Failed to get token from DefaultAzureCredential", "AuthenticationException"),
     "no Azure credentials (set AZURE_STORAGE_ACCOUNT_KEY or AZURE_CLIENT_ID/_SECRET/TENANT_ID, "
     "or run with a managed identity)"),
    (("Could not create a OAuth2 access token",),
     "no Google Cloud credentials (set GOOGLE_APPLICATION_CREDENTIALS, or run with a service account)"),
    (("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist"), "no such bucket"),
    (("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
      "HTTP status 403", "HTTP status 401", "AuthorizationFailure", "Forbidden", "Permission denied",
      "PermissionDenied"), "access denied"),
    (("NETWORK_CONNECTION", "Could not connect", "Could not resolve", "Connection refused",
      "Timeout was reached", "timed out"), "cannot reach the storage endpoint"),
    (("No such file", "does not exist", "NOT_FOUND", "NoSuchKey", "HTTP status 404"), "no such file"),
]
# Of those words, the ones a process's environment decides (credentials, endpoint,
# network): where the driver read a source and a worker cannot, the two differ there.
ENVIRONMENT_WORDS = ("credentials", "access denied", "cannot reach the storage endpoint", "no such bucket",
                     "storage error", "has no scheme", "must start with http")
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def explain(err: BaseException, scheme: str = "s3") -> str:
    """A storage error in a few words with what to check; never a key or a token."""
    text = str(err)
    if "google::cloud" in text or "Azure" in text:  # GCS, Azure: none of S3's hints apply
        scheme = "gs" if "google::cloud" in text else "abfs"
    for needles, words in ERROR_WORDS:
        if any(n in text for n in needles):
            break
    else:  # something else (a 500 from a server that refuses unsigned requests, ...)
        aws = re.search(r"AWS Error (\w+)(?: \((HTTP status \d+)\))?", text)
        words = f"storage error {aws.group(2) or aws.group(1)}" if aws else _scrub(one_line(err, 120))
        return words + (credentials_hint() if scheme == "s3" else "")
    if words == "access denied" and scheme == "s3":
        return words + (credentials_hint() or " for the AWS credentials in the environment")
    if words == "cannot reach the storage endpoint" and scheme == "s3":
        where = s3_endpoint()
        return f"{words} {_scrub(where)}" if where else f"{words} (AWS S3)"
    return words


def credentials_hint() -> str:
    """Said when an S3 request failed with no credentials set (some servers answer 500)."""
    if any(os.environ.get(v) for v in CREDENTIAL_VARIABLES) or _aws_files():
        return ""
    return "; no AWS credentials in the environment (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"


def _aws_files() -> bool:
    home = os.path.expanduser("~")
    return any(os.path.exists(os.path.join(home, ".aws", f)) for f in ("credentials", "config"))


def _scrub(text: str) -> str:
    """Drop user:password@ from any URL in a message, and request ids."""
    text = re.sub(r"//[^/@\s]*@", "//", text)
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", text)
