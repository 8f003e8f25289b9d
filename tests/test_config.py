"""The configuration contract: defaults, relative paths, and every problem named by its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load, parse
from gateway.smtp import TlsMode


def problems(document: dict[str, Any], base: Path = Path("/srv/gw")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(document, base)
    return info.value.problems


def test_development_defaults() -> None:
    config = parse({}, Path("/srv/gw"))
    [listener] = config.listeners
    assert (listener.host, listener.port, listener.tls) == ("127.0.0.1", 2525, TlsMode.NONE)
    assert listener.allow_plaintext_auth
    assert config.upstream.url is None  # the embedded server
    assert config.data_dir == Path("/srv/gw/var")
    limits = config.limits
    assert (limits.max_message_size, limits.max_attachment_size) == (8388608, 4194304)
    assert (limits.max_recipients, limits.max_connections_per_user) == (100, 10)
    assert (limits.idle_timeout, limits.data_progress_timeout) == (30, 30)
    assert (limits.auth_failures_per_address, limits.auth_failure_window) == (20, 600)
    assert (config.upstream.stream, config.upstream.subject) == ("MAIL", "mail.submit")
    assert (config.upstream.duplicate_window, config.upstream.ack_timeout) == (120, 30)


def test_a_full_file(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    (tmp_path / "gateway.toml").write_text(
        'hostname = "smtp.example.com"\ndata_dir = "state"\n'
        '[[listener]]\naddress = "0.0.0.0:587"\ntls = "starttls"\n'
        '[[listener]]\naddress = "[::]:465"\ntls = "implicit"\n'
        '[[listener]]\naddress = "127.0.0.1:25"\ntls = "none"\nproxy_protocol = true\n'
        'trusted_proxies = ["10.0.0.0/8"]\n'
        '[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'
        "[limits]\nidle_timeout = 10\ndata_timeout = 60\nmax_recipients = 50\n"
        '[users]\nfile = "people.toml"\n'
        '[upstream]\nurl = "ws://nats.internal:9222"\nack_timeout = 5\n'
        '[http]\naddress = "127.0.0.1:9100"\n[log]\nformat = "json"\nlevel = "debug"\n'
    )
    config = load(tmp_path / "gateway.toml")
    assert config.hostname == "smtp.example.com"
    assert config.data_dir == tmp_path / "state"  # relative to the file
    assert [(x.host, x.port, x.tls) for x in config.listeners] == [
        ("0.0.0.0", 587, TlsMode.STARTTLS),
        ("::", 465, TlsMode.IMPLICIT),
        ("127.0.0.1", 25, TlsMode.NONE),
    ]
    assert config.listeners[2].proxy_protocol
    assert str(config.listeners[2].trusted_proxies[0]) == "10.0.0.0/8"
    assert config.tls.certificate == tmp_path / "cert.pem"
    assert config.users.file == tmp_path / "people.toml"
    assert (config.limits.idle_timeout, config.limits.data_progress_timeout) == (10, 60)
    assert config.upstream.url == "ws://nats.internal:9222"
    assert (config.log.format, config.log.level) == ("json", "debug")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"limits": {"idle_timeout": 0}}, "limits.idle_timeout: expected a positive number"),
        ({"limits": {"max_recipients": "many"}}, "limits.max_recipients: expected a positive"),
        ({"limits": {"max_recipients": True}}, "limits.max_recipients: expected a positive"),
        ({"limits": {"idle": 3}}, "limits.idle: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"listener": [{"address": "localhost"}]}, "listener[0].address: expected host:port"),
        ({"listener": [{"tls": "none"}]}, "listener[0].address: required"),
        ({"listener": [{"address": "127.0.0.1:25", "tls": "ssl"}]}, "listener[0].tls: expected"),
        (
            {
                "listener": [
                    {"address": "127.0.0.1:2465", "tls": "implicit", "allow_plaintext_auth": True}
                ]
            },
            "listener[0].allow_plaintext_auth: meaningless",
        ),
        ({"listener": [{"address": "127.0.0.1:587"}]}, "tls.certificate: required"),
        ({"listener": [{"address": "127.0.0.1:25", "tls": "none"}] * 2}, "listed twice"),
        ({"upstream": {"url": "nats://x:4222"}}, "upstream.url: expected a ws:// or wss://"),
        ({"upstream": {"stream": "MAIL QUEUE"}}, "upstream.stream: expected a NATS name"),
        ({"log": {"level": "loud"}}, "log.level: expected one of"),
        (
            {
                "tls": {"certificate": "missing.pem", "private_key": "missing.pem"},
                "listener": [{"address": "127.0.0.1:587"}],
            },
            "tls.certificate: no such file",
        ),
        (
            {
                "listener": [
                    {"address": "127.0.0.1:25", "tls": "none", "trusted_proxies": ["not a net"]}
                ]
            },
            "listener[0].trusted_proxies:",
        ),
    ],
)
def test_each_problem_names_its_key(document: dict[str, Any], expected: str) -> None:
    found = problems(document)
    assert any(expected in p for p in found), found


def test_a_file_name_the_file_system_refuses_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    document = {
        "tls": {"certificate": "c" * 300 + ".pem", "private_key": "key.pem"},
        "listener": [{"address": "127.0.0.1:587"}],
    }
    found = problems(document, tmp_path)
    assert any(p.startswith("tls.certificate: cannot be read: File name too long") for p in found)


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"limits": {"idle_timeout": -1, "drain_timeout": "x"}, "extra": 1})
    assert len(found) == 3


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("hostname = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path / "gateway.toml")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load(tmp_path / "absent.toml")
