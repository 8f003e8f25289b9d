"""The peer: aiosmtpd with AUTH and a handler that accepts in memory.

    python bench/peer_aiosmtpd.py PORT PASSWORD [CERT KEY]

With a certificate and key it offers STARTTLS.

A well-known asyncio SMTP server doing less than the gateway (no queue, no acknowledgement,
no message checks): the figure to beat.
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class InMemory:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 Ok: queued in memory"


def main() -> None:
    port, password = int(sys.argv[1]), sys.argv[2].encode()

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == password
        return AuthResult(success=ok)

    tls = None
    if len(sys.argv) > 4:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(sys.argv[3], sys.argv[4])
    controller = Controller(
        InMemory(),
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        authenticator=authenticate,
        data_size_limit=8 * 1024 * 1024 + 1024,
        tls_context=tls,
    )
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
