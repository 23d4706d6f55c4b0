"""A small service of its own, as a jobproto user writes one, for the conformance command's tests.

    python own_service.py PORT_FILE

serves two operations of its own (``greet``, ``spell``) on a free loopback port, written to
PORT_FILE once it listens. The conformance operations are mounted only when
``OWN_SERVICE_CONFORMANCE=1`` (as a service keeps them out of production). ``OWN_SERVICE_STRICT=1``
adds ``strict``, whose validation refuses values its published schema allows: the property checks
of ``--own-operations`` must catch it.

Needs only jobproto (``jobproto[server]``): it runs in the virtualenv the wheel is installed into.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import attrs

from jobproto import JobFailed, Operations, narrate
from jobproto.asgi import create_app
from jobproto.server import serve


@attrs.frozen
class GreetParams:
    name: str = attrs.field(validator=[attrs.validators.min_len(1), attrs.validators.max_len(20)])
    style: Literal["plain", "loud"] = "plain"


@attrs.frozen
class SpellParams:
    word: str = attrs.field(validator=attrs.validators.max_len(10))


def _at_least_1000(instance: Any, attribute: Any, value: int) -> None:
    if value < 1000:
        raise ValueError(f"{attribute.name} must be at least 1000")


@attrs.frozen
class StrictParams:
    # publishes minimum 0, refuses everything under 1000: schema and validation disagree
    n: int = attrs.field(validator=_at_least_1000, metadata={"schema": {"minimum": 0}})


def operations() -> Operations:
    ops = Operations()

    @ops.operation("greet")
    async def greet(params: GreetParams) -> dict[str, str]:
        narrate("greet", f"greeting {params.name}")
        greeting = f"hello {params.name}"
        return {"greeting": greeting.upper() if params.style == "loud" else greeting}

    @ops.operation("spell")
    async def spell(params: SpellParams) -> list[str]:
        if not params.word:
            raise JobFailed("nothing_to_spell", "the word is empty")
        return list(params.word)

    if os.environ.get("OWN_SERVICE_STRICT") == "1":

        @ops.operation("strict")
        async def strict(params: StrictParams) -> int:
            return params.n

    if os.environ.get("OWN_SERVICE_CONFORMANCE") == "1":
        from jobproto.conformance import conformance_operations

        ops.merge(conformance_operations())
    return ops


def main(port_file: str) -> None:
    def ready(port: int) -> None:
        tmp = Path(port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)

    serve(create_app(operations()), on_ready=ready)


if __name__ == "__main__":
    main(sys.argv[1])
