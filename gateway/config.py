"""The configuration: TOML in, a frozen attrs tree out, every problem named by its key.

The keys are a contract (shared/spec/operations.md). Every key has a default; an unknown key is
an error; paths are relative to the file that names them.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .smtp import TlsMode

SECONDS = 1.0
DEFAULT_FILE = "gateway.toml"


class ConfigError(Exception):
    """The configuration is not usable; `problems` holds one line per problem, key first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@attrs.frozen
class Listener:
    host: str
    port: int
    tls: TlsMode = TlsMode.STARTTLS
    proxy_protocol: bool = False
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_plaintext_auth: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class TlsFiles:
    certificate: Path | None = None
    private_key: Path | None = None


@attrs.frozen
class Limits:
    max_message_size: int = 8 * 1024 * 1024  # octets
    max_attachment_size: int = 4 * 1024 * 1024  # octets, decoded
    max_recipients: int = 100
    max_connections_per_user: int = 10
    max_connections: int = 10000
    idle_timeout: float = 30 * SECONDS
    data_timeout: float | None = None  # None: the idle timeout
    proxy_timeout: float = 5 * SECONDS
    drain_timeout: float = 30 * SECONDS
    auth_failures_per_address: int = 20
    auth_failure_window: float = 600 * SECONDS

    @property
    def data_progress_timeout(self) -> float:
        return self.idle_timeout if self.data_timeout is None else self.data_timeout


@attrs.frozen
class Users:
    file: Path = Path("users.toml")


@attrs.frozen
class UpstreamConfig:
    url: str | None = None  # None: the embedded nats-server
    stream: str = "MAIL"
    subject: str = "mail.submit"
    duplicate_window: float = 120 * SECONDS
    ack_timeout: float = 30 * SECONDS


@attrs.frozen
class Http:
    address: str = "127.0.0.1:9025"


@attrs.frozen
class Log:
    format: str | None = None  # "json" | "console"; None: console on a terminal, else JSON
    level: str = "info"


DEFAULT_PRIVATE_PROXIES = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


@attrs.frozen
class Config:
    hostname: str
    data_dir: Path
    listeners: tuple[Listener, ...]
    tls: TlsFiles
    limits: Limits
    users: Users
    upstream: UpstreamConfig
    http: Http
    log: Log
    source: Path | None = None  # the file it came from


# --- parsing ----------------------------------------------------------------------------------


@attrs.define
class _Reader:
    """Walks one table, taking known keys and collecting problems."""

    table: dict[str, Any]
    path: str
    base: Path
    problems: list[str]

    def take(self, key: str, parse: Callable[[Any], Any], default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table.pop(key)
        try:
            return parse(value)
        except (TypeError, ValueError) as exc:
            self.problems.append(f"{self.key(key)}: {exc}")
            return default

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def path_of(self, value: Any) -> Path:
        return self.base / _string(value)

    def finish(self) -> None:
        for key in self.table:
            self.problems.append(f"{self.key(key)}: unknown key")


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(map(repr, options))}, got {value!r}")
        return str(value)

    return parse


def split_address(value: Any) -> tuple[str, int]:
    """`host:port` or `[v6]:port`."""
    text = _string(value)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port (or [v6-address]:port), got {text!r}")
    return host, int(port)


def _address(value: Any) -> str:
    split_address(value)
    return str(value)


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of networks, got {value!r}")
    return tuple(ipaddress.ip_network(_string(v), strict=False) for v in value)


def _listener(table: Any, index: int, base: Path, problems: list[str]) -> Listener | None:
    path = f"listener[{index}]"
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table")
        return None
    r = _Reader(dict(table), path, base, problems)
    if "address" not in r.table:
        problems.append(f"{path}.address: required")
        host, port = "127.0.0.1", 0
    else:
        host, port = r.take("address", split_address, ("127.0.0.1", 0))
    tls = TlsMode(r.take("tls", _choice("none", "starttls", "implicit"), "starttls"))
    proxy = r.take("proxy_protocol", _boolean, False)
    trusted = r.take("trusted_proxies", _networks, DEFAULT_PRIVATE_PROXIES)
    plaintext = r.take("allow_plaintext_auth", _boolean, False)
    r.finish()
    if tls is TlsMode.IMPLICIT and plaintext:
        problems.append(f'{path}.allow_plaintext_auth: meaningless with tls = "implicit"')
    return Listener(host, port, tls, proxy, trusted, plaintext)


def _section(document: dict[str, Any], name: str, base: Path, problems: list[str]) -> _Reader:
    table = document.pop(name, {})
    if not isinstance(table, dict):
        problems.append(f"{name}: expected a table")
        table = {}
    return _Reader(dict(table), name, base, problems)


def parse(document: dict[str, Any], base: Path, source: Path | None = None) -> Config:
    """A Config from a parsed TOML document; raises ConfigError listing every problem."""
    problems: list[str] = []
    doc = dict(document)
    top = _Reader(doc, "", base, problems)
    hostname = top.take("hostname", _string, socket.gethostname())
    data_dir = top.take("data_dir", top.path_of, base / "var")
    raw_listeners = doc.pop("listener", None)
    listeners: list[Listener] = []
    if raw_listeners is None:
        listeners = [Listener("127.0.0.1", 2525, TlsMode.NONE, allow_plaintext_auth=True)]
    elif not isinstance(raw_listeners, list) or not raw_listeners:
        problems.append("listener: expected one or more [[listener]] tables")
    else:
        for i, table in enumerate(raw_listeners):
            listener = _listener(table, i, base, problems)
            if listener is not None:
                listeners.append(listener)

    r = _section(doc, "tls", base, problems)
    tls = TlsFiles(r.take("certificate", r.path_of, None), r.take("private_key", r.path_of, None))
    r.finish()

    r = _section(doc, "limits", base, problems)
    d = Limits()
    limits = Limits(
        max_message_size=r.take("max_message_size", _positive_int, d.max_message_size),
        max_attachment_size=r.take("max_attachment_size", _positive_int, d.max_attachment_size),
        max_recipients=r.take("max_recipients", _positive_int, d.max_recipients),
        max_connections_per_user=r.take(
            "max_connections_per_user", _positive_int, d.max_connections_per_user
        ),
        max_connections=r.take("max_connections", _positive_int, d.max_connections),
        idle_timeout=r.take("idle_timeout", _seconds, d.idle_timeout),
        data_timeout=r.take("data_timeout", _seconds, None),
        proxy_timeout=r.take("proxy_timeout", _seconds, d.proxy_timeout),
        drain_timeout=r.take("drain_timeout", _seconds, d.drain_timeout),
        auth_failures_per_address=r.take(
            "auth_failures_per_address", _positive_int, d.auth_failures_per_address
        ),
        auth_failure_window=r.take("auth_failure_window", _seconds, d.auth_failure_window),
    )
    r.finish()

    r = _section(doc, "users", base, problems)
    users = Users(r.take("file", r.path_of, base / "users.toml"))
    r.finish()

    r = _section(doc, "upstream", base, problems)
    u = UpstreamConfig()
    upstream = UpstreamConfig(
        url=r.take("url", _ws_url, None),
        stream=r.take("stream", _token, u.stream),
        subject=r.take("subject", _token, u.subject),
        duplicate_window=r.take("duplicate_window", _seconds, u.duplicate_window),
        ack_timeout=r.take("ack_timeout", _seconds, u.ack_timeout),
    )
    r.finish()

    r = _section(doc, "http", base, problems)
    http = Http(r.take("address", _address, Http().address))
    r.finish()

    r = _section(doc, "log", base, problems)
    log = Log(
        r.take("format", _choice("json", "console"), None),
        r.take("level", _choice("debug", "info", "warning", "error"), "info"),
    )
    r.finish()
    top.finish()

    if any(listener.tls is not TlsMode.NONE for listener in listeners):
        for key, value in (("certificate", tls.certificate), ("private_key", tls.private_key)):
            if value is None:
                problems.append(f"tls.{key}: required by a listener with TLS")
                continue
            try:
                if not value.is_file():
                    problems.append(f"tls.{key}: no such file: {value}")
            except OSError as exc:  # a name too long for the file system, say
                problems.append(f"tls.{key}: cannot be read: {exc.strerror}: {value}")
    seen: set[tuple[str, int]] = set()
    for listener in listeners:
        if listener.port and (listener.host, listener.port) in seen:
            problems.append(f"listener: {listener.address} is listed twice")
        seen.add((listener.host, listener.port))
    if problems:
        raise ConfigError(problems)
    return Config(
        hostname, data_dir, tuple(listeners), tls, limits, users, upstream, http, log, source
    )


def _ws_url(value: Any) -> str:
    text = _string(value)
    if not text.startswith(("ws://", "wss://")):
        raise ValueError(f"expected a ws:// or wss:// URL, got {text!r}")
    return text


def _token(value: Any) -> str:
    text = _string(value)
    if any(c.isspace() for c in text) or "*" in text or ">" in text:
        raise ValueError(f"expected a NATS name without spaces or wildcards, got {text!r}")
    return text


def load(path: Path | None) -> Config:
    """The configuration at `path`; or ./gateway.toml if it exists; or the development
    defaults (listeners on 127.0.0.1, the embedded upstream, data under ./var/)."""
    if path is None:
        default = Path(DEFAULT_FILE)
        if not default.exists():
            return parse({}, Path.cwd())
        path = default
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror or exc}"]) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse(document, path.resolve().parent, path)
