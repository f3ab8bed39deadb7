"""Who may reach the policy app: its API key (from the environment or a file) and the host it binds.

A key never comes from a command-line value (it would show in `ps` and in job entrypoints), and a
host other than loopback needs a key unless the operator opts out by name (--allow-unauthenticated).
"""

from __future__ import annotations

from pathlib import Path

from runtime.cluster import is_loopback_host

API_KEY_ENV = "STRATA_POLICY_API_KEY"
DEFAULT_HOST = "127.0.0.1"


def check_api_key_text(key: str, source: str) -> str:
    """A usable key: printable ASCII without spaces (it travels in an HTTP header)."""
    if not key:
        raise ValueError(f"the API key from {source} is empty")
    if not all(33 <= ord(char) <= 126 for char in key):
        raise ValueError(f"the API key from {source} must be printable ASCII without spaces")
    return key


def resolve_api_key(*, env_value: str | None, key_file: str | None) -> str | None:
    """The key from ${API_KEY_ENV} or from key_file (one trailing newline dropped); both at once is refused."""
    if env_value is not None and key_file is not None:
        raise ValueError(f"the API key is given twice (${API_KEY_ENV} and --api-key-file); give it once")
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise ValueError(f"--api-key-file {key_file}: no such file")
        return check_api_key_text(path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r"),
                                  f"--api-key-file {key_file}")
    if env_value is not None:
        return check_api_key_text(env_value, f"${API_KEY_ENV}")
    return None


def check_exposure(*, host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to listen beyond loopback without an API key, unless the operator said so by name."""
    if api_key is None and not allow_unauthenticated and not is_loopback_host(host):
        raise ValueError(f"--host {host} would let anyone on the network call the policy without an API key; set "
                         f"${API_KEY_ENV} or --api-key-file PATH, or pass --allow-unauthenticated to do it anyway")
