"""`smtp-gateway users` as an operator uses it, and what the users file promises."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gateway.auth import (
    Authenticator,
    User,
    UserStore,
    hash_password,
    threaded_verifier,
    verify_password,
)
from gateway.auth.authenticator import Verifier

COMMAND = [sys.executable, "-m", "gateway", "users"]


def users(
    tmp_path: Path, *args: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args, "--users-file", str(tmp_path / "users.toml")],
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )


def test_add_list_update_remove(tmp_path: Path) -> None:
    done = users(
        tmp_path,
        "add",
        "alice",
        "--sender",
        "alice@example.com",
        "--sender",
        "@alice.example",
        password="first secret",
    )
    assert done.returncode == 0, done.stderr
    path = tmp_path / "users.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "first secret" not in path.read_text()
    assert users(tmp_path, "list").stdout == "alice alice@example.com @alice.example\n"
    users(tmp_path, "add", "bob", "--sender", "bob@example.com", password="b")
    users(tmp_path, "add", "alice", "--sender", "a@example.com", password="second secret")
    assert users(tmp_path, "list").stdout.splitlines() == [
        "alice a@example.com",
        "bob bob@example.com",
    ]
    store = UserStore.load(path)
    alice = store.get("alice")
    assert alice is not None
    assert trio.run(Authenticator(store).verify, "alice", "second secret") == alice
    assert trio.run(Authenticator(store).verify, "alice", "first secret") is None
    assert users(tmp_path, "remove", "bob").returncode == 0
    assert users(tmp_path, "list").stdout == "alice a@example.com\n"
    twice = ["dave@example.com", "@x.example", "Dave@Example.com"]
    users(tmp_path, "add", "dave", *(f"--sender={s}" for s in twice), password="d")
    assert "dave dave@example.com @x.example\n" in users(tmp_path, "list").stdout
    missing = users(tmp_path, "remove", "bob")
    assert missing.returncode == 1
    assert "no user 'bob'" in missing.stderr


@pytest.mark.parametrize(
    ("args", "password", "message"),
    [
        (["add", "carol", "--sender", "carol@example.com"], "", "empty password"),
        (["add", "carol", "--sender", "not an address"], "x", "not an email address"),
        (["add", "carol", "--sender", "@"], "x", "not @ followed by a domain"),
        (["add", "car ol", "--sender", "c@example.com"], "x", "not a usable user name"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    tmp_path: Path, args: list[str], password: str, message: str
) -> None:
    done = users(tmp_path, *args, password=password)
    assert done.returncode == 1
    assert message in done.stderr
    assert not (tmp_path / "users.toml").exists()


@pytest.mark.parametrize(
    "password",
    [
        "plain",
        "scrypt$1000$8$1$AAAA$AAAA",  # n not a power of 2: hashlib would raise at every login
        "scrypt$16384$8$1$AAAA$",  # no key
        "scrypt$16384$8$1$!!!!$AAAA",  # salt not base64
        "scrypt$16384$0$1$AAAA$AAAA",
    ],
)
def test_a_broken_users_file_is_one_clear_line(tmp_path: Path, password: str) -> None:
    (tmp_path / "users.toml").write_text(f'[users.alice]\npassword = "{password}"\n')
    done = users(tmp_path, "list")
    assert done.returncode == 1
    assert "users.alice.password: expected a scrypt hash" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_users_file_that_is_not_utf8_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "users.toml").write_bytes(b'[users.alice]\npassword = "\xff"\n')
    done = users(tmp_path, "list")
    assert done.returncode == 1
    assert "not UTF-8" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "stored",
    ["scrypt$1000$8$1$AAAA$AAAA", "scrypt$16384$8$1$AAAA$", "scrypt$x", "", "bcrypt$1$2$3$4$5"],
)
def test_a_malformed_hash_never_matches_and_never_raises(stored: str) -> None:
    assert verify_password(stored, "pw") is False


@pytest.mark.parametrize(
    ("senders", "address", "owned"),
    [
        (("alice@example.com",), "alice@example.com", True),
        (("alice@example.com",), "ALICE@Example.COM", True),
        (("alice@example.com",), "bob@example.com", False),
        (("@example.org",), "anyone@example.org", True),
        (("@example.org",), "anyone@sub.example.org", False),
        (("@example.org",), "", False),
        (("alice@example.com",), "alice@example.com.evil", False),
    ],
)
def test_ownership(senders: tuple[str, ...], address: str, owned: bool) -> None:
    assert User("alice", "scrypt$x", senders).owns(address) is owned


def counting_verifier() -> tuple[list[str], Verifier]:
    """The real threaded check, recording the hash each call was made against."""
    checks: list[str] = []
    verify = threaded_verifier(trio.CapacityLimiter(1))

    async def counting(stored: str, password: str) -> bool:
        checks.append(stored)
        return await verify(stored, password)

    return checks, counting


async def test_unknown_users_cost_a_real_check_and_successes_are_cached() -> None:
    checks, counting = counting_verifier()

    store = UserStore({"alice": User("alice", hash_password("pw"), ("a@example.com",))})
    authenticator = Authenticator(store, verifier=counting)
    assert await authenticator.verify("mallory", "pw") is None
    assert len(checks) == 1  # a real scrypt check against the dummy hash
    assert checks[0].startswith("scrypt$")
    assert await authenticator.verify("alice", "pw") is not None
    assert await authenticator.verify("alice", "pw") is not None
    assert len(checks) == 2  # the second success came from the cache
    assert await authenticator.verify("alice", "nope") is None
    assert len(checks) == 3  # failures are never cached
    assert all(b"pw" not in key for key in authenticator._cache)


async def test_concurrent_logins_with_the_same_credentials_share_one_check() -> None:
    checks, counting = counting_verifier()

    store = UserStore({"alice": User("alice", hash_password("pw"), ("a@example.com",))})
    authenticator = Authenticator(store, verifier=counting)
    results: list[object] = []

    async def login(password: str) -> None:
        results.append(await authenticator.verify("alice", password))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(login, "pw")
        for _ in range(5):
            nursery.start_soon(login, "wrong")
    assert len(checks) == 2  # one for the 20 right, one for the 5 wrong
    assert results.count(None) == 5
    assert sum(r is not None for r in results) == 20
