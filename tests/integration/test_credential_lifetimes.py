"""Credentials that end (issue 13, items 2 and 3): API keys may expire, bearer tokens may be
revoked, and a revoked token is refused by every API process."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.support import LedgerClient, extra_api
from tests.integration.test_access import (
    as_key,
    assert_problem,
    assert_unauthenticated,
    create_key,
    token_for,
)
from worker.store.tables import api_keys

REVOKED_KEY = "ledgerq:revoked-tokens"  # api/revocation.py


# ---------------------------------------------------------------- API keys expire


async def test_an_api_key_expires_and_is_then_refused_like_an_unknown_one(
    alice: LedgerClient, engine: Engine
) -> None:
    account = await alice.create_account()
    lasting = await create_key(alice, ["accounts:read"])
    assert (lasting["expires_at"], lasting["expired"]) == (None, False)
    created = await create_key(alice, ["accounts:read"], expires_in=3600)
    expires = dt.datetime.fromisoformat(created["expires_at"])
    assert expires - dt.datetime.fromisoformat(created["created_at"]) == dt.timedelta(hours=1)
    assert created["expired"] is False
    keyed = as_key(alice, created["secret"])
    assert (await keyed.request("GET", f"/api/v1/accounts/{account}")).status_code == 200

    # Its hour passes (moved into the past in the database rather than waited for).
    with engine.begin() as conn:
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == created["id"])
            .values(expires_at=sa.func.now() - dt.timedelta(seconds=1))
        )
    problem = assert_unauthenticated(await keyed.request("GET", f"/api/v1/accounts/{account}"))
    unknown = as_key(alice, "lq_" + "A" * 43)
    assert problem == assert_unauthenticated(
        await unknown.request("GET", f"/api/v1/accounts/{account}")
    )
    listing = (await alice.request("GET", "/api/v1/api-keys")).json()["items"]
    shown = {k["id"]: (k["expired"], k["expires_at"] is not None) for k in listing}
    assert shown[created["id"]] == (True, True)
    assert shown[lasting["id"]] == (False, False)
    # Revoking an expired key still works (it leaves the listing).
    assert (await alice.request("DELETE", f"/api/v1/api-keys/{created['id']}")).status_code == 204


async def test_an_api_key_expiry_is_checked(alice: LedgerClient) -> None:
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(microsecond=0)
    created = await create_key(alice, ["accounts:read"], expires_at=soon.isoformat())
    assert dt.datetime.fromisoformat(created["expires_at"]) == soon
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3660 + 2)).isoformat()
    naive = (dt.datetime.now() + dt.timedelta(days=1)).replace(tzinfo=None).isoformat()
    for extra, field in (
        ({"expires_at": past}, "expires_at"),
        ({"expires_at": far}, "expires_at"),
        ({"expires_at": naive}, "expires_at"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": 60, "expires_at": soon.isoformat()}, "expires_in"),
    ):
        r = await alice.request(
            "POST", "/api/v1/api-keys", json={"name": "n", "scopes": ["accounts:read"], **extra}
        )
        problem = assert_problem(r, 422, "validation_error")
        assert problem.get("field") == field, (extra, problem)


# ---------------------------------------------------------------- bearer tokens are revoked


@pytest.fixture(scope="module")
def other_api(service_env: dict[str, str], logs_dir: Path, api_url: str) -> Iterator[str]:
    """A second API process on the suite's database and Redis."""
    with extra_api("api-revocation", service_env, logs_dir) as url:
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def revoke(client: httpx.AsyncClient, token: str, **headers: str) -> dict[str, Any]:
    r = await client.post("/api/v1/auth/revoke", json={"token": token}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    return dict(r.json())


async def test_a_revoked_token_is_refused_by_every_api_process(
    http: httpx.AsyncClient, alice: LedgerClient, other_api: str, redis_url: str
) -> None:
    account = await alice.create_account()
    url = f"/api/v1/accounts/{account}"
    async with httpx.AsyncClient(base_url=other_api, timeout=30) as other:
        # A token revoked before the second process ever saw a bearer token: it asks Redis.
        early = await token_for(http, alice)
        assert await revoke(http, early, **bearer(early)) == {"revoked": True, "confirmed": True}
        assert_unauthenticated(await other.get(url, headers=bearer(early)))

        # Tokens both processes have served (from memory, once verified), then one is revoked
        # through the first process while authenticating with the other token.
        kept, doomed = await token_for(http, alice), await token_for(http, alice)
        for client in (http, other):
            for token in (kept, doomed):
                assert (await client.get(url, headers=bearer(token))).status_code == 200
        assert await revoke(http, doomed, **bearer(kept)) == {"revoked": True, "confirmed": True}
        for client in (other, http):
            r = await client.get(url, headers=bearer(doomed))
            problem = assert_unauthenticated(r)
            assert "revoked" in problem["detail"]
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
            assert (await client.get(url, headers=bearer(kept))).status_code == 200

        # Logging out: a token revokes itself, through the second process this time.
        assert await revoke(other, kept, **bearer(kept)) == {"revoked": True, "confirmed": True}
        for client in (http, other):
            assert_unauthenticated(await client.get(url, headers=bearer(kept)))
            r = await client.post("/api/v1/auth/revoke", json={"token": kept}, headers=bearer(kept))
            assert_unauthenticated(r)

    # The shared state: the revoked ids are in Redis until their tokens expire.
    stored = redis.Redis.from_url(redis_url)
    try:
        for token in (early, doomed, kept):
            claims = jwt.decode(token, options={"verify_signature": False})
            score = stored.zscore(REVOKED_KEY, claims["jti"])
            assert score == claims["exp"], (claims, score)
    finally:
        stored.close()
    # The user's password still mints new tokens that work.
    fresh = await token_for(http, alice)
    assert (await http.get(url, headers=bearer(fresh))).status_code == 200


async def test_revoking_needs_a_caller_and_ignores_what_is_no_token(
    http: httpx.AsyncClient, alice: LedgerClient, bob: LedgerClient, service_env: dict[str, str]
) -> None:
    token = await token_for(http, alice)
    assert_unauthenticated(await http.post("/api/v1/auth/revoke", json={"token": token}))
    secret = service_env["LEDGERQ_SECRET_KEY"]
    now = int(time.time())
    claims = {"iss": "ledgerq", "sub": alice.user_id, "name": alice.username, "jti": "x"}
    expired = jwt.encode({**claims, "iat": now - 100, "exp": now - 1}, secret, "HS256")
    for nothing in ("not-a-token", expired, token[:-3] + "AAA"):
        assert await revoke(http, nothing, **bearer(token)) == {"revoked": False, "confirmed": True}
    # Holding a token is the power to use it, and so to revoke it: Bob may revoke one he holds,
    # with his own password.
    r = await http.post(
        "/api/v1/auth/revoke", json={"token": token}, auth=(bob.username, "correct-horse-battery")
    )
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert_unauthenticated(await http.get("/api/v1/accounts", headers=bearer(token)))
    r = await http.post("/api/v1/auth/revoke", json={}, headers=bearer(await token_for(http, bob)))
    assert_problem(r, 422, "validation_error")


async def test_a_redis_outage_leaves_bearer_tokens_to_the_memory_of_a_synced_process(
    redis_url: str,
) -> None:
    """Redis unreachable: a process that had loaded the revocations answers from them (nothing
    can be revoked meanwhile), a process that never had refuses (503 in the API)."""
    import asyncio

    from api.revocation import RevocationUnavailable, TokenDenylist

    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    synced = TokenDenylist(redis_url)
    assert synced.known("warm-up") is None  # starts listening
    for _ in range(100):
        if synced.ready:
            break
        await asyncio.sleep(0.05)
    assert synced.ready
    revoked_id, other_id = f"revoked-{time.time_ns()}", f"other-{time.time_ns()}"
    await synced.revoke(revoked_id, time.time() + 60)
    # The subscription breaks and Redis stops answering.
    assert synced._task is not None
    synced._task.cancel()
    await asyncio.gather(synced._task, return_exceptions=True)
    synced.client = redis.asyncio.Redis.from_url(unreachable, socket_connect_timeout=1)
    synced._ensure_listening = lambda: None  # type: ignore[method-assign]
    assert not synced.ready
    assert await synced.is_revoked(revoked_id) is True
    assert await synced.is_revoked(other_id) is False

    never = TokenDenylist(unreachable)
    never._ensure_listening = lambda: None  # type: ignore[method-assign]
    with pytest.raises(RevocationUnavailable):
        await never.is_revoked(other_id)
    await synced.client.aclose()
    await never.client.aclose()


async def test_revocations_stay_within_their_redis_database(redis_url: str) -> None:
    """Two deployments sharing one Redis server on other databases neither hear each other's
    revocations nor wait for each other's acknowledgements."""
    import asyncio

    from api.revocation import TokenDenylist

    base, _, db = redis_url.rpartition("/")
    other_url = f"{base}/{(int(db or 0) + 1) % 16}"
    ours, theirs = TokenDenylist(redis_url), TokenDenylist(other_url)
    for denylist in (ours, theirs):
        assert denylist.known("warm-up") is None  # starts listening
    for _ in range(100):
        if ours.ready and theirs.ready:
            break
        await asyncio.sleep(0.05)
    assert ours.ready and theirs.ready
    token_id = f"scoped-{time.time_ns()}"
    confirmed, listening = await ours.revoke(token_id, time.time() + 60)
    assert confirmed == listening >= 1
    await asyncio.sleep(0.5)
    assert theirs.known(token_id) is False
    for denylist in (ours, theirs):
        assert denylist._task is not None
        denylist._task.cancel()
        await asyncio.gather(denylist._task, return_exceptions=True)
