"""The upstream queue: NATS JetStream over WebSocket.

`wire` is the NATS protocol without I/O; `client` runs it over trio-websocket; `jetstream` adds
the stream and acknowledged, idempotent publishing; `embedded` runs a private nats-server.
"""

from __future__ import annotations

from .client import ClientStatistics, NatsClient
from .embedded import EmbeddedNats, EmbeddedServerError, find_nats_server, run_embedded_nats
from .errors import (
    MessageTooLarge,
    UpstreamConfigError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .jetstream import (
    PubAck,
    StreamSettings,
    Submission,
    SubmissionDigest,
    Upstream,
    UpstreamStatistics,
    ensure_stream,
    publish,
)

__all__ = [
    "ClientStatistics",
    "EmbeddedNats",
    "EmbeddedServerError",
    "MessageTooLarge",
    "NatsClient",
    "PubAck",
    "StreamSettings",
    "Submission",
    "SubmissionDigest",
    "Upstream",
    "UpstreamConfigError",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamStatistics",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "ensure_stream",
    "find_nats_server",
    "publish",
    "run_embedded_nats",
]
