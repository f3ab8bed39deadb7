"""What the policy's HTTP entry checks before it parses a body: the API key, then the body's size.

Both come first so that a client without the key learns nothing about the body it sent, and an
oversize body is refused while it is read instead of being decoded.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.requests import Request

from serve_apps.policy.observation import PolicyRequestError


def check_api_key(authorization: str | None, api_key: str | None) -> None:
    """`authorization` is the request's Authorization header; no api_key means the app is open."""
    if api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may carry any latin-1 byte.
    given = token.strip().encode("latin-1", errors="replace")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given, api_key.encode("utf-8")):
        raise PolicyRequestError("invalid or missing API key: send `Authorization: Bearer KEY`", status_code=401)


async def read_json_body(request: Request, max_body_bytes: int) -> Any:
    """The request's JSON body, refused with 413 past max_body_bytes (declared or as it streams in)."""
    declared = request.headers.get("content-length")
    limit = f"the limit of {max_body_bytes} bytes (max_body_bytes)"
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise PolicyRequestError(f"request body of {declared} bytes is over {limit}", status_code=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise PolicyRequestError(f"request body is over {limit}", status_code=413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PolicyRequestError(f"request body is not valid JSON: {error}", param="body") from None


def unwrap_observation(body: Any) -> Any:
    """A body is the observation itself or `{"observation": {...}}` (nothing else beside it)."""
    if isinstance(body, dict) and "observation" in body:
        if len(body) > 1:
            extra = sorted(key for key in body if key != "observation")
            raise PolicyRequestError(f"unknown field {extra[0]!r} beside 'observation'", param=extra[0])
        return body["observation"]
    return body
