"""`make run`'s first step: a development configuration and a demo user, made once.

    python -m gateway.devsetup

Writes ./gateway.toml (listeners on 127.0.0.1 only, a self-signed certificate for the TLS
ones when openssl is there), adds the user `demo` to ./users.toml, and says how to send mail.
Existing files are left as they are.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .auth import User, UserStore, hash_password

CONFIG = Path("gateway.toml")
USERS = Path("users.toml")
TLS_DIR = Path("var/dev-tls")
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"
DEMO_SENDERS = ("demo@example.com", "@demo.example")
PLAIN_PORT, SUBMISSION_PORT, SMTPS_PORT = 2525, 2587, 2465


def _certificate() -> bool:
    cert, key = TLS_DIR / "cert.pem", TLS_DIR / "key.pem"
    if cert.exists() and key.exists():
        return True
    if shutil.which("openssl") is None:
        return False
    TLS_DIR.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "825",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        print(done.stderr.decode(errors="replace"), file=sys.stderr)
    return done.returncode == 0


def write_config() -> None:
    tls = _certificate()
    listeners = [
        "# Development: loopback only. Port 2525 takes AUTH without TLS (loopback development).\n"
        f'[[listener]]\naddress = "127.0.0.1:{PLAIN_PORT}"\ntls = "none"\n'
        "allow_plaintext_auth = true\n"
    ]
    if tls:
        listeners.append(
            f'\n[[listener]]\naddress = "127.0.0.1:{SUBMISSION_PORT}"\ntls = "starttls"\n'
            f'\n[[listener]]\naddress = "127.0.0.1:{SMTPS_PORT}"\ntls = "implicit"\n'
            f'\n[tls]\ncertificate = "{TLS_DIR}/cert.pem"\nprivate_key = "{TLS_DIR}/key.pem"\n'
        )
    CONFIG.write_text(
        "# Written by `make run` for development; edit freely (see shared/spec/operations.md).\n"
        'hostname = "localhost"\ndata_dir = "var"\n\n'
        + "".join(listeners)
        + f'\n[users]\nfile = "{USERS}"\n\n[log]\nformat = "console"\n'
    )
    print(f"wrote {CONFIG}" + ("" if tls else " (no openssl: plaintext listener only)"))


def add_demo_user() -> None:
    store = UserStore.load(USERS)
    if store.get(DEMO_USER) is None:
        store.with_user(User(DEMO_USER, hash_password(DEMO_PASSWORD), DEMO_SENDERS)).save(USERS)
        print(f"added user {DEMO_USER} to {USERS}")


def main() -> None:
    if not CONFIG.exists():
        write_config()
    add_demo_user()
    print(
        f"""
Log in as {DEMO_USER} / {DEMO_PASSWORD}, sending from demo@example.com (or any @demo.example).
  swaks --server 127.0.0.1:{PLAIN_PORT} --auth PLAIN --auth-user {DEMO_USER} \\
        --auth-password {DEMO_PASSWORD} --from demo@example.com --to you@example.net
  curl smtp://127.0.0.1:{PLAIN_PORT} --user {DEMO_USER}:{DEMO_PASSWORD} \\
        --mail-from demo@example.com --mail-rcpt you@example.net --upload-file message.eml
With TLS: port {SUBMISSION_PORT} (STARTTLS: curl --ssl-reqd --insecure) or {SMTPS_PORT} (smtps://).
See what arrived:  .venv/bin/smtp-gateway queue tail --all
"""
    )


if __name__ == "__main__":
    main()
