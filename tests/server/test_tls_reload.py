"""SIGHUP's certificate reload, over real TLS handshakes: a new certificate is used by new
connections, and one that does not load leaves the old one serving."""

from __future__ import annotations

import ssl
from pathlib import Path

import trio
import trustme

from gateway.server.app import Running
from gateway.smtp import TlsMode

from .harness import Client


async def tls_client(running: Running, ca: trustme.CA) -> trio.SSLStream[trio.SocketStream]:
    """A client of the implicit-TLS listener that trusts `ca` (handshake not done yet)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tcp = await trio.open_tcp_stream("127.0.0.1", running.port(TlsMode.IMPLICIT))
    return trio.SSLStream(tcp, context, server_hostname="localhost")


async def served_certificate(running: Running, ca: trustme.CA) -> bytes:
    """The certificate a new client gets on the implicit-TLS listener (DER), after a greeting."""
    tls = await tls_client(running, ca)
    async with tls:
        with trio.fail_after(10):
            await tls.do_handshake()
            assert (await Client(tls).reply()).code == 220
        der = tls.getpeercert(binary_form=True)
    assert isinstance(der, bytes)
    return der


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


async def test_reload_serves_a_new_certificate_and_survives_a_bad_one(
    running: Running, ca: trustme.CA, tmp_path: Path
) -> None:
    first = await served_certificate(running, ca)
    # A session that is open across the reloads keeps working.
    kept = Client(await tls_client(running, ca))
    assert (await kept.reply()).code == 220

    # Half a renewal: the new certificate is in place, its key not yet. OpenSSL takes the
    # certificate, then refuses the key: before the fix that left a context with the new
    # certificate and the old key, and every TLS handshake failed (no shared cipher).
    renewed = ca.issue_cert("localhost", "127.0.0.1")
    renewed.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    running.reload()
    assert await served_certificate(running, ca) == first

    # Garbage in the certificate file: the same.
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    running.reload()
    assert await served_certificate(running, ca) == first

    # The whole renewal: new connections get the new certificate.
    renewed.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    renewed.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    running.reload()
    assert await served_certificate(running, ca) == der(renewed) != first

    assert (await kept.command(b"NOOP")).code == 250
    await kept.stream.aclose()
