"""A task's CA bundle adds to the system trust store on every transport; it never replaces it."""

from __future__ import annotations

import pytest

from shared.engine.engine import transport_factory
from shared.engine.transport import TlsConfig
from shared.models import HttpRequest, TransportPolicy
from tests.conftest import Certs
from tests.http_target import HttpTarget


@pytest.mark.parametrize("transport", ["pyreqwest", "httpx"])
async def test_the_ca_bundle_is_trusted_beside_the_system_store(
    transport: str, target: HttpTarget, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The system store, as OpenSSL and rustls' platform verifier read it on Linux: here, the other CA only.
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.other_ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    statuses = []
    async with transport_factory(transport)(TransportPolicy(), TlsConfig(ca_bundle=str(certs.ca))) as sending:
        for url in (f"{target.untrusted}/ok", f"{target.https}/ok"):
            response = await sending.send(HttpRequest(url=url), user_agent=None, max_body_bytes=1000, timeout=10)
            statuses.append(response.status_code)

    assert statuses == [200, 200]
