"""Settings of one jobproto service. Every limit of docs/protocol.md §Limits is here."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["ServiceSettings"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class ServiceSettings:
    #: name used in spans and as the OpenAPI title
    service_name: str = "jobproto"
    #: "on_subscribe": a job runs when its first stream connects; "immediate": when created
    start_mode: Literal["on_subscribe", "immediate"] = "on_subscribe"
    #: a queued job nobody subscribes to within this many seconds expires
    subscribe_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: finished jobs and their logs are removed this many seconds after they end
    retention_ttl: float = attrs.field(default=600.0, validator=_positive)
    #: the newest events kept per job; older ones are dropped (a late reader gets a gap event)
    max_log_events: int = attrs.field(default=10_000, validator=_positive)
    #: a subscriber more than this many events behind the job is disconnected (it resumes)
    max_subscriber_lag: int = attrs.field(default=1024, validator=_positive)
    #: most events written to one subscriber in one send
    max_batch_events: int = attrs.field(default=256, validator=_positive)
    #: seconds between keepalive comments on a quiet stream
    keepalive_interval: float = attrs.field(default=15.0, validator=_positive)
    #: a send to a subscriber that takes longer than this closes its stream (frozen client)
    send_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: the reconnection delay sent to clients as SSE ``retry:`` (milliseconds)
    retry_ms: int = attrs.field(default=2000, validator=_positive)
    #: largest create request body accepted (bytes)
    max_body_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    #: how long DELETE waits for a running job to end before answering 202
    cancel_wait: float = attrs.field(default=5.0, validator=_positive)
    #: how often expiry and retention are checked (seconds)
    sweep_interval: float = attrs.field(default=1.0, validator=_positive)
