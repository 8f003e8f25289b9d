"""JetStream on top of the client: the stream the gateway publishes to, and acknowledged
publishing with a message id that makes retries idempotent."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import attrs
import trio

from .client import NatsClient
from .errors import (
    MessageTooLarge,
    UpstreamConfigError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)

NANOSECONDS = 1_000_000_000  # per second: JetStream durations are integers of nanoseconds
STREAM_NOT_FOUND = 10059  # JetStream err_code
MESSAGE_TOO_LARGE = 10054  # JetStream err_code: over the stream's max_msg_size
# Room for what travels with the message: the NATS header block (at most 64 KiB, the envelope
# with 100 recipients fits in a few) and the trace headers the gateway prepends.
HEADROOM = 256 * 1024  # octets


@attrs.frozen
class StreamSettings:
    """The stream the gateway publishes to ([upstream] in operations.md)."""

    name: str = "MAIL"
    subject: str = "mail.submit"
    duplicate_window: float = 120.0  # seconds
    max_message_size: int = 8 * 1024 * 1024  # octets of mail the gateway accepts

    @property
    def max_msg_size(self) -> int:
        """Octets the stream and the server must take for one message with its headers."""
        return self.max_message_size + HEADROOM


@attrs.frozen
class Submission:
    """The envelope of one accepted message, as it travels in NATS headers."""

    user: str
    client: str  # address:port
    mail_from: str
    rcpt_to: tuple[str, ...]
    msg_id: str  # Nats-Msg-Id: see submission_id()
    queue_id: str

    def headers(self) -> tuple[tuple[str, str], ...]:
        return (
            ("Nats-Msg-Id", self.msg_id),
            ("Gateway-Queue-Id", self.queue_id),
            ("Gateway-User", self.user),
            ("Gateway-Client", self.client),
            ("Gateway-Mail-From", self.mail_from),
            *(("Gateway-Rcpt-To", rcpt) for rcpt in self.rcpt_to),
        )


class SubmissionDigest:
    """The identity of a submission: its user, envelope and message bytes as received.

    A client that retries the same submission after a 4xx produces the same digest, so the
    stream stores it once (within its duplicate window). Fed chunk by chunk as DATA arrives.
    """

    def __init__(self, user: str, mail_from: str, rcpt_to: tuple[str, ...]) -> None:
        self._hash = hashlib.sha256()
        # Length-prefixed fields: no choice of user or addresses can collide with another.
        for field in (user, mail_from, *rcpt_to):
            raw = field.encode("utf-8")
            self._hash.update(len(raw).to_bytes(4, "big") + raw)
        self._hash.update(len(rcpt_to).to_bytes(4, "big"))

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def msg_id(self) -> str:
        return self._hash.hexdigest()

    def queue_id(self) -> str:
        """A short id for people (logs, the 250 reply), stable across retries: the first 80
        bits of the digest in base32 (RFC 4648, what base64.b32encode writes), ten bits a
        step. b32encode is Python in 3.11, and took 4 % of a small message's CPU."""
        return _base32_80(int.from_bytes(self._hash.digest()[:10], "big"))


_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_PAIRS = [a + b for a in _BASE32 for b in _BASE32]  # every 10-bit value


def _base32_80(n: int) -> str:
    """An 80-bit number in base32: 16 characters."""
    p = _BASE32_PAIRS
    return (
        p[n >> 70 & 1023] + p[n >> 60 & 1023] + p[n >> 50 & 1023] + p[n >> 40 & 1023]
        + p[n >> 30 & 1023] + p[n >> 20 & 1023] + p[n >> 10 & 1023] + p[n & 1023]
    )  # fmt: skip


# {"stream":"NAME","seq":N} with ',"duplicate":true' when the stream had it already.
_USUAL_ACK = re.compile(
    rb'\{"stream":"([A-Za-z0-9_-]{1,255})",\s*"seq":([0-9]{1,19})(,\s*"duplicate":\s*true)?\}'
).fullmatch


@attrs.frozen
class PubAck:
    """JetStream's acknowledgement: the message is stored at `seq` (or was already)."""

    stream: str
    seq: int
    duplicate: bool


def _api_error(reply: Any) -> dict[str, Any] | None:
    if isinstance(reply, dict):
        error = reply.get("error")
        if isinstance(error, dict):
            return error
    return None


async def ensure_stream(client: NatsClient, settings: StreamSettings) -> None:
    """Create the stream if it is absent; verify it if present. On a difference that would
    break the gateway's promises, raise UpstreamConfigError saying what to change."""
    max_payload = client.server_info.get("max_payload")
    if isinstance(max_payload, int) and max_payload < settings.max_msg_size:
        raise UpstreamConfigError(
            f"the NATS server's max_payload is {max_payload} octets, below the "
            f"{settings.max_msg_size} needed for messages of up to {settings.max_message_size} "
            f"octets with their headers: raise max_payload in the NATS server configuration "
            f"(for example max_payload: {settings.max_msg_size // (1024 * 1024) + 1}MB)"
        )
    if not client.server_info.get("jetstream", True):
        raise UpstreamConfigError("JetStream is not enabled on the NATS server")
    try:
        info = await client.request_json(f"$JS.API.STREAM.INFO.{settings.name}")
    except UpstreamRejected as exc:
        if exc.code == 503:
            raise UpstreamConfigError("JetStream is not enabled on the NATS server") from None
        raise
    error = _api_error(info)
    if error is not None:
        if error.get("err_code") != STREAM_NOT_FOUND:
            raise UpstreamConfigError(
                f"JetStream stream {settings.name}: {error.get('description', error)}"
            )
        await _create_stream(client, settings)
        return
    _verify_stream(settings, info.get("config", {}))


async def _create_stream(client: NatsClient, settings: StreamSettings) -> None:
    config = {
        "name": settings.name,
        "subjects": [settings.subject],
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "num_replicas": 1,
        "duplicate_window": int(settings.duplicate_window * NANOSECONDS),
        "max_msg_size": settings.max_msg_size,
        "allow_direct": True,
    }
    reply = await client.request_json(f"$JS.API.STREAM.CREATE.{settings.name}", config)
    error = _api_error(reply)
    if error is not None:
        raise UpstreamConfigError(
            f"cannot create JetStream stream {settings.name}: {error.get('description', error)}"
        )


def _verify_stream(settings: StreamSettings, config: dict[str, Any]) -> None:
    problems = []
    subjects = config.get("subjects") or []
    if settings.subject not in subjects:
        problems.append(f"its subjects {subjects} do not include {settings.subject!r}")
    window = config.get("duplicate_window", 0) / NANOSECONDS
    if abs(window - settings.duplicate_window) > 0.001:
        problems.append(
            f"its duplicate_window is {window:g} s, the gateway is configured for "
            f"{settings.duplicate_window:g} s"
        )
    size = config.get("max_msg_size", -1)
    if size != -1 and size < settings.max_msg_size:
        problems.append(
            f"its max_msg_size of {size} octets is below the {settings.max_msg_size} needed"
        )
    if problems:
        raise UpstreamConfigError(
            f"JetStream stream {settings.name} exists but "
            + "; ".join(problems)
            + ": update the stream or the [upstream] configuration"
        )


async def publish(
    client: NatsClient,
    settings: StreamSettings,
    submission: Submission,
    message: bytes | list[bytes],
    deadline: float | None = None,
    prefix: bytes = b"",
) -> PubAck:
    """Publish `prefix` + `message` and wait for JetStream's acknowledgement, until `deadline`
    (trio time)."""
    reply = await client.request(
        settings.subject, message, submission.headers(), prefix=prefix, deadline=deadline
    )
    return pub_ack(reply.payload)


def pub_ack(payload: bytes) -> PubAck:
    """JetStream's answer to a publish, or the UpstreamError it says."""
    # The usual answer is read without the JSON decoder (a fifth of an ack's handling);
    # anything else, errors and added fields included, goes through it.
    usual = _USUAL_ACK(payload)
    if usual is not None:
        return PubAck(usual[1].decode(), int(usual[2]), usual[3] is not None)
    try:
        ack = json.loads(payload)
    except ValueError:
        raise UpstreamRejected(
            f"JetStream acknowledgement is not JSON: {payload[:80]!r}", temporary=True
        ) from None
    error = _api_error(ack)
    if error is not None:
        code = error.get("err_code")
        text = f"JetStream refused the message: {error.get('description', error)}"
        if code == MESSAGE_TOO_LARGE:
            raise MessageTooLarge(text, code=code)
        raise UpstreamRejected(text, temporary=True, code=code)
    if not isinstance(ack, dict) or not isinstance(ack.get("seq"), int):
        raise UpstreamRejected(f"unexpected JetStream acknowledgement: {ack!r}", temporary=True)
    return PubAck(str(ack.get("stream", "")), ack["seq"], bool(ack.get("duplicate", False)))


@attrs.frozen
class UpstreamStatistics:
    """A snapshot of the upstream's counters."""

    connected: bool
    in_flight: int
    published: int  # acknowledged by JetStream (duplicates included)
    duplicates: int  # acknowledged as already stored
    failed: int
    reconnects: int


@attrs.define(eq=False)
class Upstream:
    """The gateway's upstream: a NATS client, the stream, and the deadline for an ack."""

    client: NatsClient
    settings: StreamSettings
    ack_timeout: float = 30.0  # seconds
    _published: int = 0
    _duplicates: int = 0
    _failed: int = 0
    _in_flight: int = 0

    @classmethod
    def create(cls, url: str, settings: StreamSettings, ack_timeout: float = 30.0) -> Upstream:
        async def check(client: NatsClient) -> None:
            await ensure_stream(client, settings)

        return cls(NatsClient(url, on_connect=check), settings, ack_timeout)

    @property
    def available(self) -> bool:
        return self.client.connected

    def statistics(self) -> UpstreamStatistics:
        client = self.client.statistics()
        return UpstreamStatistics(
            connected=client.connected,
            in_flight=self._in_flight,
            published=self._published,
            duplicates=self._duplicates,
            failed=self._failed,
            reconnects=client.reconnects,
        )

    async def publish(
        self, submission: Submission, message: bytes | list[bytes], prefix: bytes = b""
    ) -> PubAck:
        """Store `prefix` + `message` (the trace headers, then the message as received, in
        pieces if it came so: nothing joins its megabytes); return once JetStream acknowledged
        it, or raise UpstreamError."""
        self._in_flight += 1
        deadline = trio.current_time() + self.ack_timeout
        try:
            ack = await publish(self.client, self.settings, submission, message, deadline, prefix)
        except UpstreamTimeout:
            self._failed += 1
            raise UpstreamTimeout(
                f"no acknowledgement from JetStream within {self.ack_timeout:g} s"
            ) from None
        except UpstreamError:
            self._failed += 1
            raise
        finally:
            self._in_flight -= 1
        self._published += 1
        self._duplicates += ack.duplicate
        return ack
