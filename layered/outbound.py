"""Which hosts a loaded pipeline may contact, and which secrets it may send: the caller decides.

A saved folder is data that anyone who can write it can change (its manifest detects
accidents, not an author: whoever edits ``pipeline.json`` can recompute the hashes). So a
folder alone must never make ``Pipeline.load`` talk to the network or read a secret:

* **Endpoints.** Every network address a part's saved config names (keys such as
  ``base_url`` or ``uri`` holding ``scheme://...``, anywhere in a slot's config, nested parts
  included) must be allowed by the caller: ``trust_remote_endpoint=`` (a URL, a list of
  URLs compared by origin, or ``True`` for "whatever this folder names") or the
  ``LAYERED_TRUSTED_ENDPOINTS`` environment variable (comma-separated URLs). Otherwise
  loading fails with :class:`UntrustedEndpointError` before any part is built.
* **Secrets.** Keys naming environment variables (``api_key_env`` and any ``*_env``) are
  never taken from the folder: ``api_key_env`` is the caller's value (None: send no key),
  other ``*_env`` keys are cleared.

The pipeline's free-form ``metadata`` is not a slot config and is never read here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Literal, Mapping, Sequence
from urllib.parse import urlsplit

from layered.errors import ConfigError

log = logging.getLogger(__name__)

TRUST_ENV = "LAYERED_TRUSTED_ENDPOINTS"
ENDPOINT_KEYS = frozenset({"base_url", "url", "uri", "endpoint", "host", "address", "server", "api_base"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Trust = bool | str | Sequence[str] | None


class UntrustedEndpointError(ConfigError):
    """A saved folder names a network endpoint the caller did not allow."""


def _is_remote(key: str, value: Any) -> bool:
    if key not in ENDPOINT_KEYS or not isinstance(value, str) or not value.strip():
        return False
    if key in ("host", "address", "server"):
        return True  # a bare host name is a network address too
    scheme = urlsplit(value).scheme.lower()
    return "://" in value and scheme not in ("", "file")


def endpoints(config: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(where, url)`` for every network address in ``config`` (a part's saved config, walked deeply)."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            where = f"{path}.{key}" if path else str(key)
            if _is_remote(str(key), value):
                yield where, value
            else:
                yield from endpoints(value, where)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from endpoints(value, f"{path}[{i}]")


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, with the scheme's default port filled in."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number: compare it as written
        port = None
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def _allowed(trust: Trust) -> Literal[True] | set[str]:
    if trust is True:
        return True
    urls = [trust] if isinstance(trust, str) else list(trust or [])
    urls += [u.strip() for u in os.environ.get(TRUST_ENV, "").split(",") if u.strip()]
    return {origin(u) for u in urls}


def _secrets(config: Any, api_key_env: str | None, path: str = "") -> Any:
    if isinstance(config, Mapping):
        out = {}
        for key, value in config.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.endswith("_env"):
                wanted = api_key_env if key == "api_key_env" else None
                if value is not None and value != wanted:
                    log.warning("ignoring %s=%r from the saved folder: secrets are named by the caller "
                                "(--api-key-env / api_key_env=)", where, value)
                out[key] = wanted
            else:
                out[key] = _secrets(value, api_key_env, where)
        return out
    if isinstance(config, list):
        return [_secrets(v, api_key_env, f"{path}[{i}]") for i, v in enumerate(config)]
    return config


def checked_slots(folder: Any, slots: Mapping[str, Any], *, trust: Trust = False,
                  api_key_env: str | None = None) -> dict[str, Any]:
    """The slot configs of ``folder`` with secrets named by the caller; refuses untrusted endpoints.

    Raises :class:`UntrustedEndpointError` naming the first endpoint the caller did not allow.
    """
    allowed = _allowed(trust)
    for slot, config in slots.items():
        for where, url in endpoints(config, slot):
            if allowed is not True and origin(url) not in allowed:
                raise UntrustedEndpointError(
                    f"{folder} would send requests to {url} ({where}); loading a folder contacts no host the caller "
                    f"did not allow: pass trust_remote_endpoint={url!r} (CLI: --trust-endpoint {url}) or set {TRUST_ENV}"
                )
    return {slot: _secrets(config, api_key_env, slot) for slot, config in slots.items()}
