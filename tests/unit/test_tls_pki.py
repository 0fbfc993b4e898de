from __future__ import annotations

import ssl
from datetime import UTC, datetime

import pytest
from cryptography import x509

from billow_control.core.tls import make_cluster_pki

pytestmark = pytest.mark.unit


def test_every_role_certificate_is_signed_by_the_cluster_ca(tmp_path) -> None:
    pki = make_cluster_pki("c-1", datetime.now(UTC))
    ca = x509.load_pem_x509_certificate(pki.ca_cert_pem.encode())
    for role in ("scheduler", "worker", "client"):
        cert = x509.load_pem_x509_certificate(pki.pairs[role].cert_pem.encode())
        cert.verify_directly_issued_by(ca)
        assert f"{role}.c-1" in cert.subject.rfc4514_string()
        # The pair loads into an SSL context, as Dask will load it.
        (tmp_path / "c.pem").write_text(pki.pairs[role].cert_pem)
        (tmp_path / "k.pem").write_text(pki.pairs[role].key_pem)
        ssl.create_default_context().load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")


def test_clusters_get_distinct_authorities() -> None:
    now = datetime.now(UTC)
    assert make_cluster_pki("c-1", now).ca_cert_pem != make_cluster_pki("c-2", now).ca_cert_pem
