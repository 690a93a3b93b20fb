"""Which side of a job cannot read a data URI: the driver checks the source first
(experiments/jobs/training.py opens it for its metadata), then every shard worker opens it
again in its own process, on its own node, with that node's environment
(workers/data/locations.py: credentials and endpoints come from the environment only).

So a worker that cannot read what the driver read is told apart: the line says that
this shell could and the workers on node X could not, and which of the storage
variables set here (names only, never values) the nodes' environment lacks: a
cluster's nodes have their own environment, not the submitting shell's.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from workers.data.locations import ENDPOINT_VARIABLES, ENVIRONMENT_WORDS, is_uri

# What each kind of store reads from the environment (workers/data/locations.py), by prefix.
PREFIXES = {"s3": ("AWS_",), "gs": ("GOOGLE_", "GCE_", "CLOUDSDK_"), "gcs": ("GOOGLE_", "GCE_", "CLOUDSDK_"),
            "abfs": ("AZURE_",), "abfss": ("AZURE_",),
            "hdfs": ("HADOOP_", "HDFS_", "ARROW_LIBHDFS_DIR", "JAVA_HOME", "CLASSPATH")}
PREFIXES["viewfs"] = PREFIXES["hdfs"]
NAMES_SHOWN = 3  # of the variables the nodes lack; the rest as "..."
# Named first when the nodes lack them (a shell has others too, AWS_PAGER, AWS_CA_BUNDLE...).
DECISIVE = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            *ENDPOINT_VARIABLES, "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
            "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID")


def storage_variables(spec: str) -> list[str]:
    """The names of the variables set (non-empty) in this process that a store of this
    URI's kind reads; [] for a local path."""
    prefixes = PREFIXES.get(urlsplit(spec).scheme.lower(), ()) if is_uri(spec) else ()
    return sorted(v for v, value in os.environ.items() if value and v.startswith(prefixes))


def worker_error(spec: str, info: dict) -> str:
    """The line for a worker's input error (its ready() info): as the worker said it,
    unless it is about reading the URI in that worker's environment; then which side
    fails and what its environment lacks."""
    error = info["error"]
    if not is_uri(spec) or not any(w in error for w in ENVIRONMENT_WORDS):
        return error
    why = error
    for prefix in ("data.source: ", "cannot read ", spec + ": "):
        why = why[len(prefix):] if why.startswith(prefix) else why
    why = why.split(";")[0]  # the worker's hint is about its environment, said below
    node = info.get("node_ip") or info.get("node_id", "?")[:8]
    lacking = [v for v in storage_variables(spec) if v not in set(info.get("storage_env") or ())]
    lacking.sort(key=lambda v: (DECISIVE.index(v) if v in DECISIVE else len(DECISIVE), v))
    if lacking:
        names = ", ".join(lacking[:NAMES_SHOWN]) + (", ..." if len(lacking) > NAMES_SHOWN else "")
        env = f"the nodes' environment lacks {names} (set in this shell)"
    else:
        env = "the nodes' storage settings (environment, credentials files, role) differ from this shell's"
    return f"data.source: {spec}: read here but not by the workers on node {node} ({why}): {env}"
