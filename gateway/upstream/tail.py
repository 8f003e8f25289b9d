"""`smtp-gateway queue tail`: follow the stream and print the envelope of each new message."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from . import wire
from .client import NatsClient
from .errors import UpstreamConfigError, UpstreamUnavailable

NANOSECONDS = 1_000_000_000
CONSUMER_IDLE = 30  # seconds an abandoned consumer of ours lingers on the server


def embedded_url(data_dir: Path) -> str | None:
    """The WebSocket URL of the embedded server running under `data_dir`, if one is."""
    for path in sorted((data_dir / "nats" / "ports").glob("*.ports")):
        try:
            ports = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        urls = ports.get("websocket") if isinstance(ports, dict) else None
        if urls:
            return str(urls[0])
    return None


def envelope(msg: wire.Msg) -> dict[str, Any]:
    """What `queue tail` shows of one stored message."""
    fields = dict(msg.headers)
    seq = None
    if msg.reply:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        tokens = msg.reply.split(".")
        if len(tokens) >= 9 and tokens[5].isdigit():
            seq = int(tokens[5])
    size = fields.get("Nats-Msg-Size")
    return {
        "seq": seq,
        "queue_id": fields.get("Gateway-Queue-Id"),
        "user": fields.get("Gateway-User"),
        "client": fields.get("Gateway-Client"),
        "mail_from": fields.get("Gateway-Mail-From"),
        "rcpt_to": [v for k, v in msg.headers if k == "Gateway-Rcpt-To"],
        "size": int(size) if size and size.isdigit() else None,
    }


def format_line(env: dict[str, Any]) -> str:
    rcpts = ",".join(f"<{r}>" for r in env["rcpt_to"])
    return (
        f"seq={env['seq']} queue_id={env['queue_id']} user={env['user']} "
        f"from=<{env['mail_from']}> to={rcpts} size={env['size']} client={env['client']}"
    )


async def tail(
    url: str,
    stream: str,
    emit: Callable[[dict[str, Any]], None],
    *,
    from_start: bool = False,
    count: int | None = None,
) -> None:
    """Print envelopes of messages as they are stored (or all, with `from_start`)."""
    client = NatsClient(url, name="smtp-gateway queue tail")

    async def lost() -> None:
        # The consumer is ephemeral: it does not outlive the connection, so neither do we.
        await client.wait_disconnected()
        raise UpstreamUnavailable("lost the connection to the NATS server")

    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        nursery.start_soon(lost)
        inbox = f"_INBOX.tail.{secrets.token_hex(8)}"
        async with client.subscribe(inbox) as messages:
            config = {
                "deliver_subject": inbox,
                "deliver_policy": "all" if from_start else "new",
                "ack_policy": "none",
                "headers_only": True,
                "inactive_threshold": CONSUMER_IDLE * NANOSECONDS,
            }
            reply = await client.request_json(
                f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
            )
            error = reply.get("error") if isinstance(reply, dict) else None
            if error:
                raise UpstreamConfigError(
                    f"cannot follow stream {stream}: {error.get('description', error)}"
                )
            seen = 0
            async for msg in messages:
                if msg.status is not None:
                    continue  # heartbeats and flow control carry a status and no message
                emit(envelope(msg))
                seen += 1
                if count is not None and seen >= count:
                    break
        nursery.cancel_scope.cancel()
