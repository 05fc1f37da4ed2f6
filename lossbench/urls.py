"""URLs that may carry credentials (a study storage, an MLflow tracking URI): ``mask_url`` and
``mask_text`` hide the password wherever lossbench shows or stores such a URL, and
``with_password`` puts a password taken from the environment into a URL, so it never has to be
typed on a command line."""

from __future__ import annotations

import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

from lossbench.errors import ConfigError

MASK = "***"
# scheme://user:password@  (the password is whatever stands between the first ':' after the
# user and the '@' that ends the credentials)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):[^@\s'\"]*@")


def mask_url(url: str | None) -> str | None:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return url if not url else mask_text(url)


def mask_text(text: str) -> str:
    """Every URL's password in ``text`` replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text)


def has_credentials(text: str) -> bool:
    return mask_text(text) != text


def with_password(url: str, env_name: str | None, setting: str) -> str:
    """``url`` with the password read from the environment variable ``env_name`` (None: the
    URL as it is). ``setting`` names the option that gave ``env_name``, for the error."""
    if not env_name:
        return url
    password = os.environ.get(env_name)
    if password is None:
        raise ConfigError(
            f"{setting}={env_name} names an environment variable that is not set. Fix: export "
            f"{env_name}=... (the password) before the command, or leave {setting} unset."
        )
    parts = urlsplit(url)
    if not parts.username:
        raise ConfigError(
            f"{setting}={env_name} gives a password, but the URL {mask_url(url)} names no user. "
            "Fix: put the user in the URL, e.g. postgresql+psycopg2://USER@HOST/DB."
        )
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
