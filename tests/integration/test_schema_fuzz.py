"""Schemathesis against the running API's own OpenAPI document: generated requests, valid and
invalid, never get a 5xx, and every answer matches what the document says about it.

Bounded for CI: a fixed number of examples per operation, generated deterministically.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tests.integration.support import PASSWORD, key

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def _setup_user(api_url: str, master: dict[str, str]) -> dict[str, Any]:
    """A user with an account, an operation, a hold and an API key, and an asset with a close, so
    some paths name real things."""
    with httpx.Client(base_url=api_url, timeout=30) as http:
        asset = http.post(
            "/api/v1/assets",
            json={
                "ticker": f"FZ{key()[:6]}".upper(),
                "name": "fuzz",
                "kind": "fund",
                "currency": "USD",
            },
            headers=master,
        ).json()["id"]
        username = f"fuzz-{key()}"
        r = http.post("/api/v1/auth/register", json={"username": username, "password": PASSWORD})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        token = http.post("/api/v1/auth/token", auth=(username, PASSWORD)).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        account = http.post(
            "/api/v1/accounts",
            json={"name": "fuzz", "type": "checking", "currency": "USD"},
            headers=auth,
        ).json()["id"]
        deposit = {"type": "deposit", "account_id": account, "amount": "10.00"}
        operation = http.post(
            "/api/v1/operations",
            json=deposit,
            headers={**auth, "Idempotency-Key": key(), "Prefer": "wait=10"},
        ).json()["id"]
        hold = http.post(
            "/api/v1/operations",
            json={"type": "hold", "account_id": account, "amount": "1.00"},
            headers={**auth, "Idempotency-Key": key(), "Prefer": "wait=10"},
        ).json()["id"]
        api_key = http.post(
            "/api/v1/api-keys", json={"name": "fuzz", "scopes": ["accounts:read"]}, headers=auth
        ).json()["id"]
    return {
        "bearer": auth,
        "basic": {"Authorization": httpx.BasicAuth(username, PASSWORD)._auth_header},
        "path": {
            "account_id": account,
            "operation_id": operation,
            "key_id": api_key,
            "asset_id": asset,
            "client_id": user_id,
            "hold_id": hold,
        },
        # Bodies that debit or credit the caller's own account, so submits get accepted too.
        "bodies": {
            "submitOperation": deposit,
            "submitOperationBatch": {"operations": [{**deposit, "idempotency_key": key()}]},
        },
    }


def fuzz(
    schema: Any,
    base_url: str,
    headers_for: Any,
    modes: list[GenerationMode],
    pinned: dict[str, str] | None = None,
    bodies: dict[str, Any] | None = None,
) -> dict[int, int]:
    """Run every operation of the schema; returns how many answers had each status."""
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = [operation.as_strategy(generation_mode=mode) for mode in modes]
        names = {p.name for p in operation.path_parameters}
        if pinned and names and names <= pinned.keys():
            # Some paths name things that exist (and are the caller's), not only random ids.
            strategies.append(operation.as_strategy(path_parameters={n: pinned[n] for n in names}))
        body = (bodies or {}).get(operation.definition.raw.get("operationId"))
        if body is not None:
            strategies.append(operation.as_strategy(body=body))
        fuzz_operation(st.one_of(strategies), base_url, headers_for(operation), statuses)
    return statuses


def fuzz_operation(
    cases: Any, base_url: str, headers: dict[str, str], statuses: dict[int, int]
) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def call(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    call()


def test_generated_requests_get_no_5xx_and_match_the_schema(
    api_url: str, service_env: dict[str, str]
) -> None:
    master = {"X-API-Key": service_env["LEDGERQ_MASTER_KEY"]}
    user = _setup_user(api_url, master)
    admin_prefixes = ("/api/v1/admin", "/api/v1/clients", "/api/v1/reports")

    def credentials(operation: Any) -> dict[str, str]:
        admin_write = (
            operation.path.startswith("/api/v1/assets") and operation.method.upper() == "POST"
        )
        if operation.path.startswith(admin_prefixes) or admin_write:
            return master
        if operation.path == "/api/v1/auth/token":
            return user["basic"]
        return dict(user["bearer"])

    started = time.monotonic()
    # As a signed-in caller: valid and invalid requests reach the handlers.
    schema = schemathesis.openapi.from_url(f"{api_url}/docs/openapi.json")
    schema.config.generation.update(with_security_parameters=False)
    authed = fuzz(
        schema,
        api_url,
        credentials,
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        pinned=user["path"],
        bodies=user["bodies"],
    )
    # As whoever the generated credentials say: the authentication layer meets garbage.
    schema = schemathesis.openapi.from_url(f"{api_url}/docs/openapi.json")
    schema.config.generation.update(with_security_parameters=True)
    anonymous = fuzz(schema, api_url, lambda operation: {}, [GenerationMode.POSITIVE])
    elapsed = time.monotonic() - started

    print(
        f"\nschemathesis: {sum(authed.values())} requests signed in {sorted(authed.items())}, "
        f"{sum(anonymous.values())} with generated credentials {sorted(anonymous.items())}, "
        f"{elapsed:.1f}s"
    )
    # The run reached the handlers (not only the authentication layer) and stayed bounded.
    assert authed.get(200, 0) > 30 and authed.get(404, 0) > 10 and authed.get(202, 0) >= 1
    assert anonymous.get(401, 0) > 50
    assert elapsed < 120
