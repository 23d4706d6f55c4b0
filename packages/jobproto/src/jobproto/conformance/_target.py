"""The service a conformance run tests, and the check that it can be tested at all.

The black-box suite drives a service through the conformance operations (``echo``, ``fail``,
``wait``, ``burst``, ``crash``: ``conformance_operations()``). Before any test runs,
``check_target`` reads the service's ``/openapi.json`` and refuses, with one message a person
can act on, a service that cannot be reached, needs a token it was not given, or does not mount
those operations (how to mount them, and how to keep them off in production).

Needs only httpx (no pytest, Hypothesis or uvicorn), so the command line can say what is wrong
before it starts pytest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import httpx

if TYPE_CHECKING:
    from ..asgi import ServiceSettings

__all__ = [
    "CONFORMANCE_OPERATIONS",
    "TOKEN_ENV",
    "Target",
    "TargetUnfit",
    "check_target",
    "mount_advice",
    "published_operations",
    "token_from",
]

#: the environment variable that holds the token of the service (and of the suite's requests)
TOKEN_ENV = "JOBPROTO_TOKEN"

#: the operations the suite drives a service through (``conformance_operations()``)
CONFORMANCE_OPERATIONS = ("burst", "crash", "echo", "fail", "wait")


class TargetUnfit(Exception):
    """The service cannot be tested: the message says why and what to do."""


@attrs.frozen
class Target:
    """A service under test: where it is, and its settings when the suite knows them."""

    kind: str
    url: str
    #: the service's ``ServiceSettings`` when the suite started it (None: limits unknown)
    settings: ServiceSettings | None
    #: the bearer token the service requires, if any
    token: str | None = attrs.field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The headers that authenticate a request to the service (none without a token)."""
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 10.0) -> httpx.Client:
        """A client of the service whose every request carries the token."""
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)


def token_from(path: Path | None, environ: Mapping[str, str]) -> str | None:
    """The token in file ``path`` (stripped), else ``$JOBPROTO_TOKEN``, else ``None``."""
    if path is not None:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} holds no token")
        return token
    return environ.get(TOKEN_ENV) or None


def published_operations(openapi: Mapping[str, Any]) -> list[str]:
    """The operation names a jobproto/1 ``/openapi.json`` publishes (its ``op_NAME`` schemas)."""
    components = openapi.get("components")
    schemas = components.get("schemas") if isinstance(components, Mapping) else None
    if not isinstance(schemas, Mapping):
        return []
    return sorted(name[3:] for name in schemas if isinstance(name, str) and name.startswith("op_"))


def mount_advice(missing: list[str]) -> str:
    """How to mount the conformance operations, and keep them out of production."""
    return (
        "The conformance suite drives a service through its test operations "
        f"({', '.join(CONFORMANCE_OPERATIONS)}); this one lacks {', '.join(missing)}.\n"
        "Mount them in a test deployment of the service, only when a setting says so:\n"
        "\n"
        "    import os\n"
        "    from jobproto.conformance import conformance_operations\n"
        "\n"
        '    if os.environ.get("MYSERVICE_CONFORMANCE") == "1":\n'
        "        ops.merge(conformance_operations())\n"
        "\n"
        "and start it with MYSERVICE_CONFORMANCE=1 for the run. Keep them off in production: "
        "crash fails jobs on purpose, burst floods the job log, wait holds jobs open.\n"
        "The service's own operations are not exercised by this suite; add --own-operations "
        "for property checks of their published schemas."
    )


def check_target(url: str, token: str | None, timeout: float = 10.0) -> dict[str, Any]:
    """The service's ``/openapi.json``, once it shows the service can be tested.

    Raises ``TargetUnfit`` (one message, no traceback needed) when the service cannot be
    reached, refuses the token (or its absence), refuses a token without the jobs scope (403),
    is not a jobproto/1 service (its document is not shaped like one), or does not publish
    every conformance operation.
    """
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    where = url.rstrip("/") + "/openapi.json"
    try:
        r = httpx.get(where, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise TargetUnfit(f"cannot reach {where}: {exc or type(exc).__name__}") from None
    if r.status_code == 401:
        given = "was refused" if token else "was not given"
        raise TargetUnfit(
            f"{url} needs a bearer token, and the token {given}: pass --token-file PATH "
            "(a file holding it) or set JOBPROTO_TOKEN"
        )
    if r.status_code == 403:
        raise TargetUnfit(
            f"GET {where} answered 403 ({_error_message(r)}): the token must hold the jobs "
            "scope (the scope the service's job routes and /openapi.json need, 'jobs' unless "
            "its Security says otherwise)"
        )
    if r.status_code != 200:
        raise TargetUnfit(f"GET {where} answered {r.status_code}: is {url} a jobproto/1 service?")
    try:
        doc = r.json()
    except ValueError:
        raise TargetUnfit(
            f"GET {where} did not answer JSON: is {url} a jobproto/1 service?"
        ) from None
    if not isinstance(doc, dict) or not _is_jobproto_document(doc):
        raise TargetUnfit(f"{where} does not describe a jobproto/1 service")
    offered = set(published_operations(doc))
    missing = [name for name in CONFORMANCE_OPERATIONS if name not in offered]
    if missing:
        raise TargetUnfit(
            f"{url} does not offer the conformance operations.\n" + mount_advice(missing)
        )
    return doc


def _is_jobproto_document(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` has the shape of a jobproto/1 ``/openapi.json`` (what the suite reads)."""
    info, components = doc.get("info"), doc.get("components")
    return (
        isinstance(info, dict)
        and info.get("version") == "jobproto/1"
        and isinstance(components, dict)
        and isinstance(components.get("schemas"), dict)
    )


def _error_message(r: httpx.Response) -> str:
    """The message of a jobproto/1 error answer, else its first 200 characters."""
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.text[:200].strip() or "no message"
    return str(message)
