"""The upstream against a real nats-server on loopback."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream import (
    MessageTooLarge,
    NatsClient,
    PubAck,
    StreamSettings,
    Submission,
    SubmissionDigest,
    Upstream,
    UpstreamConfigError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.upstream.jetstream import _USUAL_ACK, _base32_80, ensure_stream, pub_ack

from .natsproc import (
    SETTINGS,
    NatsProcess,
    direct_get,
    running_upstream,
    started,
    stream_info,
)

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"


def submission(
    message: bytes,
    user: str = "alice",
    rcpts: tuple[str, ...] = ("bob@example.net",),
    client: str = "192.0.2.7:40000",
) -> Submission:
    digest = SubmissionDigest(user, "alice@example.com", rcpts)
    digest.update(message)
    return Submission(user, client, "alice@example.com", rcpts, digest.msg_id(), digest.queue_id())


async def test_publish_is_acknowledged_and_stored_exactly(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery) as upstream:
        sub = submission(MESSAGE, rcpts=("bob@example.net", "carol@example.org"))
        ack = await upstream.publish(sub, MESSAGE)
        assert (ack.stream, ack.seq, ack.duplicate) == ("MAIL", 1, False)
        stored = await direct_get(upstream.client, ack.seq)
        assert stored.payload == MESSAGE
        assert stored.header("Nats-Msg-Id") == sub.msg_id
        assert stored.header("Gateway-User") == "alice"
        assert stored.header("Gateway-Client") == "192.0.2.7:40000"
        assert stored.header("Gateway-Mail-From") == "alice@example.com"
        assert stored.header("Gateway-Queue-Id") == sub.queue_id
        rcpts = [v for k, v in stored.headers if k == "Gateway-Rcpt-To"]
        assert rcpts == ["bob@example.net", "carol@example.org"]
        assert upstream.statistics().published == 1


async def test_eight_mib_byte_exact(nats: NatsProcess, nursery: trio.Nursery) -> None:
    message = os.urandom(4 * 1024 * 1024).hex().encode()  # 8 MiB
    assert len(message) == 8 * 1024 * 1024
    async with running_upstream(nats.ws_url, nursery) as upstream:
        ack = await upstream.publish(submission(message), message)
        stored = await direct_get(upstream.client, ack.seq)
        assert stored.payload == message


async def test_same_submission_twice_is_stored_once(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery) as upstream:
        first = await upstream.publish(submission(MESSAGE), MESSAGE)
        again = await upstream.publish(submission(MESSAGE), MESSAGE)  # the client's retry
        other = await upstream.publish(submission(MESSAGE, rcpts=("x@example.net",)), MESSAGE)
        assert (again.seq, again.duplicate) == (first.seq, True)
        assert other.seq == first.seq + 1
        assert not other.duplicate
        info = await stream_info(upstream.client)
        assert info["state"]["messages"] == 2
        assert upstream.statistics().duplicates == 1


async def test_the_servers_acks_take_the_quick_reading(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery) as upstream:
        sub = submission(MESSAGE)
        payloads = [
            (await upstream.client.request(SETTINGS.subject, MESSAGE, sub.headers())).payload
            for _ in range(2)  # stored, then a duplicate
        ]
    assert all(_USUAL_ACK(p) for p in payloads), payloads
    assert [pub_ack(p) for p in payloads] == [PubAck("MAIL", 1, False), PubAck("MAIL", 1, True)]


def _json_reading(ack: object) -> PubAck:
    assert isinstance(ack, dict)
    return PubAck(str(ack.get("stream", "")), ack["seq"], bool(ack.get("duplicate", False)))


@given(
    stream=st.text("ABCXYZabc019_-", min_size=1, max_size=20),
    seq=st.integers(0, 2**63 - 1),
    duplicate=st.sampled_from([None, True, False]),
    extra=st.sampled_from([{}, {"domain": "hub"}, {"error": {"code": 503}}]),
    separators=st.sampled_from([(",", ":"), (", ", ": ")]),
)
def test_any_ack_reads_as_the_json_decoder_reads_it(
    stream: str,
    seq: int,
    duplicate: bool | None,
    extra: dict[str, object],
    separators: tuple[str, str],
) -> None:
    ack: dict[str, object] = {"stream": stream, "seq": seq}
    if duplicate is not None:
        ack["duplicate"] = duplicate
    ack.update(extra)
    payload = json.dumps(ack, separators=separators).encode()
    if "error" in ack:
        with pytest.raises(UpstreamRejected):
            pub_ack(payload)
    else:
        assert pub_ack(payload) == _json_reading(ack)


@pytest.mark.parametrize(
    "payload", [b"", b"{", b'{"stream":"MAIL"}', b'{"stream":"MAIL","seq":"1"}', b"[1]"]
)
def test_an_ack_that_is_no_ack_is_a_temporary_refusal(payload: bytes) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        pub_ack(payload)
    assert caught.value.temporary


def test_submission_identity() -> None:
    base = submission(MESSAGE)
    assert base.msg_id == submission(MESSAGE).msg_id
    assert base.queue_id == submission(MESSAGE).queue_id
    assert len(base.queue_id) == 16
    assert base.queue_id.isalnum()
    for other in (
        submission(MESSAGE + b"x"),
        submission(MESSAGE, user="mallory"),
        submission(MESSAGE, rcpts=("bob@example.net", "carol@example.org")),
        submission(MESSAGE, rcpts=("bob@example.netcarol@example.org",)),
    ):
        assert other.msg_id != base.msg_id
    # The client's address is not part of the identity: a retry may come from another port.
    assert submission(MESSAGE, client="198.51.100.1:1").msg_id == base.msg_id


async def test_server_killed_with_messages_in_flight(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    results: dict[int, int | Exception] = {}
    messages = {i: MESSAGE + b"%d\r\n" % i for i in range(200)}
    async with running_upstream(nats.ws_url, nursery, ack_timeout=10) as upstream:

        async def one(i: int) -> None:
            try:
                results[i] = (await upstream.publish(submission(messages[i]), messages[i])).seq
            except (UpstreamUnavailable, UpstreamTimeout, UpstreamRejected) as exc:
                results[i] = exc

        with trio.fail_after(20):  # every publish returns or raises: none hangs
            async with trio.open_nursery() as publishers:
                for i in range(100):  # acknowledged before the fault
                    publishers.start_soon(one, i)
            nats.freeze()  # from here nothing is acknowledged ...
            async with trio.open_nursery() as publishers:
                for i in range(100, 200):  # ... so these are in flight when it dies
                    publishers.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()  # the writer has sent them
                assert upstream.statistics().in_flight == 100
                nats.kill()
        acked = {i: r for i, r in results.items() if isinstance(r, int)}
        failed = {i: r for i, r in results.items() if isinstance(r, Exception)}
        assert len(results) == 200
        assert sorted(acked) == list(range(100))
        assert sorted(failed) == list(range(100, 200))
        assert all(isinstance(e, UpstreamUnavailable) for e in failed.values())

        # Restarted, the client reconnects by itself...
        await nats.restart()
        with trio.fail_after(15):
            await upstream.client.wait_connected()
        assert upstream.statistics().reconnects >= 1
        # ... every acknowledged message really is in the stream ...
        for i, seq in acked.items():
            stored = await direct_get(upstream.client, seq)
            assert stored.payload == messages[i]
        # ... and a retry of a failed one is stored once, however it ended the first time.
        i = next(iter(failed))
        ack = await upstream.publish(submission(messages[i]), messages[i])
        info = await stream_info(upstream.client)
        assert info["state"]["messages"] >= len(acked)
        stored = await direct_get(upstream.client, ack.seq)
        assert stored.payload == messages[i]


async def test_publish_while_the_server_is_down_fails_at_once(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery, ack_timeout=30) as upstream:
        nats.kill()
        with trio.fail_after(5):
            await upstream.client.wait_disconnected()
            with pytest.raises(UpstreamUnavailable, match="not connected"):
                await upstream.publish(submission(MESSAGE), MESSAGE)


async def test_no_ack_within_the_deadline(nats: NatsProcess, nursery: trio.Nursery) -> None:
    async with running_upstream(nats.ws_url, nursery, ack_timeout=1) as upstream:
        nats.freeze()  # alive on the socket, answering nothing
        try:
            with trio.fail_after(5), pytest.raises(UpstreamTimeout, match="within 1 s"):
                await upstream.publish(submission(MESSAGE), MESSAGE)
        finally:
            nats.thaw()
        assert upstream.statistics().failed == 1


async def test_stream_is_created_when_absent(nats: NatsProcess, nursery: trio.Nursery) -> None:
    settings = StreamSettings(name="OUTBOX", subject="out.mail", duplicate_window=60)
    async with running_upstream(nats.ws_url, nursery, settings) as upstream:
        info = await stream_info(upstream.client, "OUTBOX")
        config = info["config"]
        assert config["subjects"] == ["out.mail"]
        assert config["duplicate_window"] == 60 * 10**9
        assert config["max_msg_size"] == settings.max_msg_size
        assert config["storage"] == "file"


async def test_existing_stream_that_differs_is_a_clear_error(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery):
        pass  # creates MAIL with a 120 s window
    with pytest.raises(UpstreamConfigError, match=r"duplicate_window is 120 s.*configured for 60"):
        await nursery.start(
            Upstream.create(nats.ws_url, StreamSettings(duplicate_window=60)).client.run
        )


async def test_stream_deleted_while_running_is_a_clear_error(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery) as upstream:
        deleted = await upstream.client.request_json("$JS.API.STREAM.DELETE.MAIL")
        assert deleted.get("success") is True
        with pytest.raises(UpstreamRejected, match="no stream listens") as info:
            await upstream.publish(submission(MESSAGE), MESSAGE)
        assert info.value.temporary


async def test_max_payload_too_small_is_a_clear_error(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    small = NatsProcess(tmp_path, max_payload=1024 * 1024)
    await small.start()
    try:
        with pytest.raises(UpstreamConfigError, match=r"max_payload is 1048576 octets.*raise"):
            await nursery.start(Upstream.create(small.ws_url, StreamSettings()).client.run)
    finally:
        await small.stop()


async def test_message_over_max_payload_is_refused_before_sending(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery) as upstream:
        huge = b"x" * (nats.max_payload + 1)
        with pytest.raises(MessageTooLarge, match="max_payload"):
            await upstream.publish(submission(huge), huge)
        ack = await upstream.publish(submission(MESSAGE), MESSAGE)  # still connected
        assert ack.seq == 1


async def test_message_over_the_streams_limit_is_permanent(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    settings = StreamSettings(max_message_size=1024 * 1024)
    async with running_upstream(nats.ws_url, nursery, settings) as upstream:
        big = b"y" * (settings.max_msg_size + 1)
        with pytest.raises(MessageTooLarge, match="JetStream refused") as info:
            await upstream.publish(submission(big), big)
        assert not info.value.temporary


@pytest.mark.parametrize(
    ("userinfo", "match"),
    [
        ("", "requires authentication"),
        ("gw:wrong@", "refused the credentials"),
        ("nobody:x@", "refused the credentials"),
    ],
    ids=["none", "wrong password", "unknown user"],
)
async def test_wrong_credentials_are_a_clear_error(
    tmp_path: Path, nursery: trio.Nursery, userinfo: str, match: str
) -> None:
    server = NatsProcess(tmp_path, extra_config='authorization { user: gw, password: "s3cret" }\n')
    await server.start()
    try:
        url = f"ws://{userinfo}127.0.0.1:{server.websocket_port}"
        with pytest.raises(UpstreamConfigError, match=match) as info:
            await nursery.start(Upstream.create(url, StreamSettings()).client.run)
        assert "s3cret" not in str(info.value)
        assert "wrong" not in str(info.value)
        # And with the right ones, it works.
        good = Upstream.create(
            f"ws://gw:s3cret@127.0.0.1:{server.websocket_port}", StreamSettings()
        )
        await nursery.start(good.client.run)
        assert (await good.publish(submission(MESSAGE), MESSAGE)).seq == 1
    finally:
        await server.stop()


async def test_server_down_at_start_is_a_clear_error(nursery: trio.Nursery) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = NatsClient(f"ws://127.0.0.1:{port}")
    with pytest.raises(
        UpstreamUnavailable, match=f"cannot connect to NATS at ws://127.0.0.1:{port}"
    ):
        await nursery.start(client.run)


async def test_many_publishes_in_flight_on_one_connection(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    async with running_upstream(nats.ws_url, nursery) as upstream:
        seqs: list[int] = []
        peak = 0

        async def one(i: int) -> None:
            nonlocal peak
            message = MESSAGE + b"%d\r\n" % i
            pending = upstream.publish(submission(message), message)
            peak = max(peak, upstream.statistics().in_flight + 1)
            seqs.append((await pending).seq)

        async with trio.open_nursery() as group:
            for i in range(500):
                group.start_soon(one, i)
        assert sorted(seqs) == list(range(1, 501))
        assert peak > 1
        stats = upstream.statistics()
        assert (stats.published, stats.failed, stats.in_flight) == (500, 0, 0)


async def test_a_server_that_stops_answering_pings_is_left_and_reconnected(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    # A peer that hangs (here: stopped) keeps the TCP connection open: only the PINGs tell.
    async def check(client: NatsClient) -> None:
        await ensure_stream(client, SETTINGS)

    client = NatsClient(nats.ws_url, on_connect=check, ping_interval=0.2)
    upstream = Upstream(client, SETTINGS, 10)
    await nursery.start(client.run)
    await upstream.publish(submission(MESSAGE), MESSAGE)
    nats.freeze()
    try:
        with trio.fail_after(10):  # a real server and real time: not a timing assertion
            await client.wait_disconnected()  # two PINGs unanswered
        with pytest.raises(UpstreamUnavailable, match="not connected"):
            await upstream.publish(submission(MESSAGE + b"2"), MESSAGE + b"2")
    finally:
        nats.thaw()
    with trio.fail_after(15):
        await client.wait_connected()
    message = MESSAGE + b"after\r\n"
    ack = await upstream.publish(submission(message), message)
    assert (await direct_get(client, ack.seq)).payload == message
    assert client.statistics().reconnects >= 1


async def test_a_server_without_jetstream_is_a_clear_error(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with started(NatsProcess(tmp_path / "plain", jetstream=False)) as server:
        upstream = Upstream.create(server.ws_url, SETTINGS)
        with trio.fail_after(15), pytest.raises(UpstreamConfigError, match="JetStream is not en"):
            await nursery.start(upstream.client.run)


@given(st.binary(min_size=10, max_size=10))
def test_queue_ids_are_base32_as_the_standard_library_writes_it(octets: bytes) -> None:
    assert _base32_80(int.from_bytes(octets, "big")) == base64.b32encode(octets).decode()
