"""operations.md: messages' bodies and passwords are never logged, not even at debug level.

A real gateway process at `level = "debug"`, driven through logins that succeed and fail
(PLAIN and LOGIN), a message accepted and messages refused; then its whole output is searched
for the secrets, plain and in the base64 they crossed the wire in.
"""

from __future__ import annotations

import base64
from pathlib import Path

import trio

from gateway.auth import User, UserStore, hash_password

from .conftest import gateway_process
from .harness import Client

PASSWORD = "pw-M4rker-0f-the-user"
WRONG = "pw-M4rker-wr0ng-guess"
BODY = "b0dy-M4rker-text"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


async def test_no_password_and_no_body_reaches_the_log_even_at_debug(tmp_path: Path) -> None:
    UserStore(
        {"alice": User("alice", hash_password(PASSWORD, n=2**4), ("alice@example.com",))}
    ).save(tmp_path / "users.toml")
    async with gateway_process(tmp_path, '[log]\nlevel = "debug"\nformat = "json"\n') as gateway:
        client = Client(await trio.open_tcp_stream("127.0.0.1", gateway.port))
        assert (await client.reply()).code == 220
        await client.command(b"EHLO c")
        wrong = b"AUTH PLAIN " + b64(f"\0alice\0{WRONG}")
        assert (await client.command(wrong)).code == 535
        assert (await client.command(b"AUTH LOGIN")).code == 334
        assert (await client.command(b64("alice"))).code == 334
        assert (await client.command(b64(WRONG))).code == 535
        right = b"AUTH PLAIN " + b64(f"\0alice\0{PASSWORD}")
        assert (await client.command(right)).code == 235
        for sender, extra, code in [
            ("alice@example.com", "", 250),  # accepted
            ("mallory@example.com", "", 550),  # From not hers: refused after the dot
            ("alice@example.com", "\0", 550),  # a NUL: refused
        ]:
            assert (await client.command(b"MAIL FROM:<alice@example.com>")).code == 250
            assert (await client.command(b"RCPT TO:<bob@example.net>")).code == 250
            assert (await client.command(b"DATA")).code == 354
            message = f"From: {sender}\r\nSubject: {BODY}\r\n\r\n{BODY}{extra}\r\n.\r\n"
            assert (await client.command(message.encode())).code == code
        assert (await client.command(b"QUIT")).code == 221
        await client.stream.aclose()
        assert await gateway.stop() == 0
    log = gateway.log
    assert b"gateway.drained" in log
    assert b'"level": "debug"' in log  # debug was on
    assert b"message.accepted" in log
    assert log.count(b"auth.failure") >= 2, log.decode()
    for secret in (PASSWORD, WRONG, BODY):
        assert secret.encode() not in log, secret
        assert b64(secret) not in log, secret
    assert b64(f"\0alice\0{PASSWORD}") not in log
    assert b64(f"\0alice\0{WRONG}") not in log
