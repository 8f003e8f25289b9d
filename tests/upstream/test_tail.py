"""`smtp-gateway queue tail`, run as a user runs it, against the embedded server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from gateway.upstream import EmbeddedNats, StreamSettings, Upstream, run_embedded_nats
from gateway.upstream.embedded import embedded_max_payload

from .natsproc import stream_info
from .test_jetstream import submission

SETTINGS = StreamSettings()
TAIL = [sys.executable, "-m", "gateway", "queue", "tail"]


async def start(nursery: trio.Nursery, data_dir: Path) -> Upstream:
    server: EmbeddedNats = await nursery.start(
        lambda task_status: run_embedded_nats(
            data_dir,
            max_payload=embedded_max_payload(SETTINGS.max_msg_size),
            task_status=task_status,
        )
    )
    upstream = Upstream.create(server.websocket_url, SETTINGS)
    await nursery.start(upstream.client.run)
    return upstream


async def test_tail_all_finds_the_embedded_server_and_prints_envelopes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    upstream = await start(nursery, tmp_path)
    one = b"Subject: one\r\n\r\nfirst\r\n"
    two = b"Subject: two\r\n\r\nsecond\r\n"
    await upstream.publish(submission(one), one)
    await upstream.publish(submission(two, rcpts=("a@example.net", "b@example.org")), two)
    with trio.fail_after(20):
        done = await trio.run_process(
            [*TAIL, "--data-dir", str(tmp_path), "--all", "--count", "2", "--json"],
            capture_stdout=True,
            capture_stderr=True,
        )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2]
    assert lines[1]["rcpt_to"] == ["a@example.net", "b@example.org"]
    assert lines[1]["mail_from"] == "alice@example.com"
    assert lines[1]["user"] == "alice"
    assert lines[1]["size"] == len(two)
    assert (
        lines[1]["queue_id"] == submission(two, rcpts=("a@example.net", "b@example.org")).queue_id
    )


async def wait_for_consumer(upstream: Upstream) -> None:
    """The consumer is made by another process: there is no event of ours to wait on."""
    for _ in range(400):
        if (await stream_info(upstream.client))["state"]["consumer_count"]:
            return
        await trio.sleep(0.05)
    raise AssertionError("queue tail never created its consumer")


async def test_tail_prints_only_new_messages_by_default(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    upstream = await start(nursery, tmp_path)
    old = b"Subject: old\r\n\r\nold\r\n"
    new = b"Subject: new\r\n\r\nnew\r\n"
    await upstream.publish(submission(old), old)
    process = await trio.lowlevel.open_process(
        [*TAIL, "--data-dir", str(tmp_path), "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    out = b""
    try:
        with trio.fail_after(20):
            await wait_for_consumer(upstream)
            await upstream.publish(submission(new), new)
            while chunk := await process.stdout.receive_some(65536):
                out += chunk
            await process.wait()
    finally:
        process.kill()
        await process.stdout.aclose()
        await process.stderr.aclose()
    [line] = out.decode().splitlines()
    assert line.startswith("seq=2 queue_id=")
    assert "from=<alice@example.com> to=<bob@example.net>" in line
    assert process.returncode == 0


def test_tail_without_a_server_says_what_to_do(tmp_path: Path) -> None:
    done = subprocess.run(
        [*TAIL, "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "no --url given and no embedded NATS server running" in done.stderr


def test_tail_with_an_unreachable_url_is_one_clear_line() -> None:
    done = subprocess.run(
        [*TAIL, "--url", "ws://127.0.0.1:9"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        "smtp-gateway: cannot connect to NATS at ws://127.0.0.1:9"
    )
    assert "Traceback" not in done.stderr
