"""The SDK's TLS to the control plane: https verifies against the trusted CAs, loaded
once per process; a plain-http client (the embedded server) loads none and fails closed."""

from __future__ import annotations

import ssl

import pytest

from billow.api import tls_for

pytestmark = pytest.mark.unit


def test_https_verifies_names_and_certificates_with_cas_loaded_once() -> None:
    first, second = tls_for("https://api.example.com"), tls_for("https://other.example.com")
    assert first is second
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert first.cert_store_stats()["x509_ca"] > 0


def test_plain_http_loads_no_ca_and_would_refuse_any_certificate() -> None:
    context = tls_for("http://127.0.0.1:8000")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0
