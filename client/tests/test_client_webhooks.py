"""Webhook signature verification against known vectors (computed independently with
`openssl dgst -sha256 -hmac`); pure, no I/O."""

from __future__ import annotations

import pytest
from ledgerq_client import SignatureError, sign, verify_signature
from ledgerq_client.webhooks import signature_of

BODY = b'{"id":"evt_1","type":"operation.succeeded"}'
T = 1_700_000_000
SECRET = "whsec_test_secret"
OLD_SECRET = "whsec_old"
# HMAC-SHA256 of b"1700000000." + BODY under each secret.
V1 = "495c0df116a464e3bac149f7aee2db48e7637124832d5806ff537d760471da2f"
V1_OLD = "65efb7d12d3c78822afbe8b6e74104b67662356d5a76d9c09d9111828fa9a24f"


def test_known_vectors() -> None:
    assert signature_of(BODY, SECRET, T) == V1
    assert signature_of(BODY, OLD_SECRET, T) == V1_OLD
    assert signature_of(b"", "key", 0) == (
        "85841b4efc3cd7776c3c8f9b7cca9e281c550e5d19889d78e9e669c6337f000d"
    )
    assert sign(BODY, [SECRET, OLD_SECRET], T) == f"t={T},v1={V1},v1={V1_OLD}"


def test_a_valid_signature_verifies() -> None:
    verify_signature(BODY, f"t={T},v1={V1}", [SECRET], now=T)
    verify_signature(BODY, f"t={T},v1={V1}", [SECRET.encode()], now=T + 300)  # bytes secret
    verify_signature(BODY, f" t={T} , v1={V1.upper()} ", [SECRET], now=T - 300)  # spaces, case


def test_rotation_either_secret_verifies() -> None:
    both = f"t={T},v1={V1},v1={V1_OLD}"
    verify_signature(BODY, both, [SECRET], now=T)  # a receiver that already has the new secret
    verify_signature(BODY, both, [OLD_SECRET], now=T)  # one still on the old secret
    verify_signature(BODY, f"t={T},v1={V1_OLD}", [SECRET, OLD_SECRET], now=T)  # holding both


def test_unknown_schemes_are_ignored() -> None:
    verify_signature(BODY, f"t={T},v0=abc,v2=def,v1={V1}", [SECRET], now=T)


def _code(body: bytes, header: str | None, secrets: list[str], **kw: float) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_signature(body, header, secrets, **kw)  # type: ignore[arg-type]
    return caught.value.code


def test_failures_have_codes() -> None:
    assert _code(BODY, None, [SECRET], now=T) == "signature_missing"
    assert _code(BODY, "  ", [SECRET], now=T) == "signature_missing"
    assert _code(BODY, f"v1={V1}", [SECRET], now=T) == "signature_malformed"  # no t
    assert _code(BODY, f"t=abc,v1={V1}", [SECRET], now=T) == "signature_malformed"
    assert _code(BODY, f"t={T},t={T},v1={V1}", [SECRET], now=T) == "signature_malformed"
    assert _code(BODY, f"t={T}", [SECRET], now=T) == "signature_malformed"  # no v1
    assert _code(BODY, f"t={T},{V1}", [SECRET], now=T) == "signature_malformed"
    assert _code(BODY, f"t={T},v1={V1}", ["whsec_other"], now=T) == "signature_mismatch"
    assert _code(BODY + b" ", f"t={T},v1={V1}", [SECRET], now=T) == "signature_mismatch"
    # The timestamp is signed: moving it breaks the signature.
    assert _code(BODY, f"t={T + 1},v1={V1}", [SECRET], now=T) == "signature_mismatch"


def test_tolerance() -> None:
    header = f"t={T},v1={V1}"
    assert _code(BODY, header, [SECRET], now=T + 301) == "signature_expired"
    assert _code(BODY, header, [SECRET], now=T - 301) == "signature_expired"  # from the future
    assert _code(BODY, header, [SECRET], now=T + 61, tolerance=60) == "signature_expired"
    verify_signature(BODY, header, [SECRET], tolerance=60, now=T + 60)


def test_no_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        verify_signature(BODY, f"t={T},v1={V1}", [], now=T)


def test_sign_then_verify_with_the_clock() -> None:
    verify_signature(BODY, sign(BODY, [SECRET]), [SECRET])
