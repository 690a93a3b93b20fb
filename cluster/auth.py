"""Ray's auth token, found where Ray looks for it.

Clusters started with `ray start --head` (Ray 2.60) require a token. Ray reads it
from RAY_AUTH_TOKEN, then the file named by RAY_AUTH_TOKEN_PATH, then
~/.ray/auth_token; but a client sends it only when RAY_AUTH_MODE=token is set
(without it Ray Client just times out and Jobs says "Missing authentication
token"). So when a token is there and the mode is unset, we set the mode.
The token itself is never printed or logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def token_source() -> str | None:
    """Where a token would come from (an env var or a file path), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def enable_token_mode() -> str | None:
    """Send the token on connections from this process if one exists; return its source.

    Call it before Ray is first imported: Ray reads RAY_AUTH_MODE once, at import.
    """
    source = token_source()
    if source and not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"
    return source


TOKEN_HINT = "set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token to the cluster's token"


# user:password@ after a scheme (anywhere in a text: Ray's messages quote the address),
# or at the start of a bare HOST:PORT address.
_URI_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_BARE_USERINFO = re.compile(r"^[^\s/@:]+:[^\s/@]*@")


def redact(text: str) -> str:
    """`text` with the user:password@ of an address or URI in it replaced by ***@:
    for messages, run params and tags, which must never show a password."""
    return _BARE_USERINFO.sub("***@", _URI_USERINFO.sub(r"\1***@", text))
