"""Every file in deploy/ checked by a tool that understands it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from gateway.config import parse
from gateway.upstream.embedded import find_nats_server

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is needed to check deploy/ (Debian package; make test installs it)"
    return path


def test_haproxy_accepts_its_configuration() -> None:
    done = subprocess.run(
        [tool("haproxy"), "-c", "-f", str(DEPLOY / "compose" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (DEPLOY / "compose" / "haproxy.cfg").read_text().splitlines()
    config = "\n".join(line.split("#", 1)[0] for line in lines)  # directives, not comments
    assert config.count("send-proxy-v2") == 2
    assert "GET /readyz" in config
    assert "shutdown-sessions" not in config  # the drain ends sessions, not the balancer


def test_nats_accepts_its_configuration() -> None:
    done = subprocess.run(
        [find_nats_server(), "-t", "-c", str(DEPLOY / "compose" / "nats.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sync_interval: always" in (DEPLOY / "compose" / "nats.conf").read_text()


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = (DEPLOY / "smtp-gateway.service").read_text()
    # The unit names where a deployment installs the command; here it is in the venv.
    installed = Path(sys.executable).parent / "smtp-gateway"
    local = tmp_path / "smtp-gateway.service"
    local.write_text(unit.replace("/opt/smtp-gateway/bin/smtp-gateway", str(installed)))
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", str(local)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for setting in (
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "KillSignal=SIGTERM",
    ):
        assert setting in unit
    assert int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1)) > 30  # type: ignore[union-attr]


def check_gateway_toml(text: str, tmp_path: Path) -> Any:
    """A gateway configuration from deploy/, validated by the gateway's own parser (the TLS
    files it names are made up here)."""
    document = tomllib.loads(text)
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    document["tls"] = {"certificate": "cert.pem", "private_key": "key.pem"}
    return parse(document, tmp_path)


def test_compose_file_and_its_gateway_configuration(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"haproxy", "gateway1", "gateway2", "nats"}
    assert compose["services"]["gateway2"]["stop_grace_period"] == "45s"
    config = check_gateway_toml((DEPLOY / "compose" / "gateway.toml").read_text(), tmp_path)
    assert all(listener.proxy_protocol for listener in config.listeners)
    assert config.upstream.url == "ws://nats:9222"


def test_kubernetes_manifests(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "gateway.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    config = check_gateway_toml(kinds["ConfigMap"]["data"]["gateway.toml"], tmp_path)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.limits.drain_timeout
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    ports = {p["targetPort"] for p in kinds["Service"]["spec"]["ports"]}
    assert ports == {"submission", "smtps"}


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    # No Docker engine runs here to build it: these are the promises the guide makes of it.
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert "STOPSIGNAL SIGTERM" in text
