"""Bearer tokens: a verified token is remembered until its expiry, and only under its signing key."""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

import jwt
import pytest
from litestar.exceptions import HTTPException

from api import auth
from api.auth import issue_token, user_principal, verify_token

KEY = "k" * 40


def test_a_verified_token_is_remembered_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    principal = user_principal(uuid4(), "ann", "bearer")
    token = issue_token(KEY, principal, ttl_seconds=60)
    decodes: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes.append(args[0])
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    assert verify_token(KEY, token).id == principal.id
    assert verify_token(KEY, token).id == principal.id
    assert decodes == [token]  # the second check answered from the cache

    # Past the token's expiry the entry is not used: the token is decoded (and judged) again.
    real_time = time.time
    monkeypatch.setattr(auth.time, "time", lambda: real_time() + 61)
    assert verify_token(KEY, token).id == principal.id  # PyJWT's own clock: still valid
    assert decodes == [token, token]


def test_a_cached_token_is_not_valid_under_another_key() -> None:
    token = issue_token(KEY, user_principal(uuid4(), "bob", "bearer"), ttl_seconds=60)
    verify_token(KEY, token)
    with pytest.raises(HTTPException) as raised:
        verify_token("other" * 8, token)
    assert raised.value.status_code == 401


def test_the_cache_never_holds_the_token() -> None:
    token = issue_token(KEY, user_principal(uuid4(), "cy", "bearer"), ttl_seconds=60)
    verify_token(KEY, token)
    assert all(token.encode() not in key for key in auth._verified_tokens)
