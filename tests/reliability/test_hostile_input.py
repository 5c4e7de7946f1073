"""Scenarios 13 to 16: forged and odd tokens, GraphQL abuse, oversized and malformed bodies, mass
assignment, against a real API process configured for RS256 with an audience and an issuer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.api.auth import ADMIN_PERMISSION
from tests.reliability.harness import TRANSPORT_WS, Cluster, figure, running_cluster
from tests.test_auth import rsa_pem_pair

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

AUDIENCE, ISSUER, LEEWAY = "jobs-gateway", "https://auth.example", 30
ERROR_KEYS = {"success", "error", "message"}
ABUSERS, ABUSE_SECONDS = 2, 2.0  # concurrent abusive clients, for this long, while /healthz is probed


PUBLIC, PRIVATE = rsa_pem_pair()


@pytest.fixture(scope="module")
def cluster(module_workdir: Path, module_database_url: str) -> Iterator[Cluster]:
    auth = {
        "jwt_algorithm": "RS256",
        "jwt_public_key": PUBLIC,
        "jwt_private_key": PRIVATE,
        "jwt_secret": None,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "jwt_leeway_seconds": LEEWAY,
    }
    env = {k: v for k, v in auth.items() if v is not None and k != "jwt_private_key"}
    with running_cluster(module_workdir, module_database_url, apis=1, workers=0, api_env=env, **auth) as c:
        yield c


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "7",
        "permissions": [ADMIN_PERMISSION],
        "iat": now,
        "exp": now + 300,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _rs256(**overrides: Any) -> str:
    return jwt.encode(_claims(**overrides), PRIVATE, algorithm="RS256")


def _unsigned(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: `alg: none`, or HS256 keyed with whatever the attacker has."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = "" if key is None else _b64(hmac.new(key, head.encode(), hashlib.sha256).digest())
    return f"{head}.{signature}"


TOKENS: list[tuple[str, Any, int, str | None]] = [
    ("valid", lambda: _rs256(), 200, None),
    ("alg-none", lambda: _unsigned({"alg": "none", "typ": "JWT"}, _claims(), None), 401, "invalid_token"),
    ("hs256-with-public-key", lambda: _unsigned({"alg": "HS256"}, _claims(), PUBLIC.encode()), 401, "invalid_token"),
    ("missing-exp", lambda: _rs256(exp=None), 401, "invalid_token"),
    ("nbf-in-future", lambda: _rs256(nbf=int(time.time()) + 300), 401, "invalid_token"),
    ("nbf-within-leeway", lambda: _rs256(nbf=int(time.time()) + LEEWAY // 2), 200, None),
    ("expired-within-leeway", lambda: _rs256(exp=int(time.time()) - LEEWAY // 2), 200, None),
    ("expired-past-leeway", lambda: _rs256(exp=int(time.time()) - LEEWAY * 2), 401, "token_expired"),
    ("wrong-aud", lambda: _rs256(aud="another-service"), 401, "invalid_token"),
    ("missing-aud", lambda: _rs256(aud=None), 401, "invalid_token"),
    ("wrong-iss", lambda: _rs256(iss="https://evil.example"), 401, "invalid_token"),
    ("10kB", lambda: _rs256(pad="x" * 10_000), 401, "invalid_token"),
    ("other-permission", lambda: _rs256(permissions=["billing.read"]), 403, "forbidden"),
]


async def test_s13_forged_expired_misdirected_and_oversized_tokens_are_refused(cluster: Cluster) -> None:
    outcomes: dict[str, tuple[int, str, str]] = {}
    async with httpx.AsyncClient(base_url=cluster.apis[0].url, timeout=10) as client:
        for name, build, status, code in TOKENS:
            token = build()
            headers = {"Authorization": f"Bearer {token}"}
            rest = await client.get("/api/jobs", headers=headers)
            gql = await client.post("/graphql", headers=headers, json={"query": "{ jobs { id } }"})
            gql_code = "OK" if "errors" not in gql.json() else gql.json()["errors"][0]["extensions"]["code"]
            outcomes[name] = (rest.status_code, rest.json()["error"] if code else "", gql_code)
            assert rest.status_code == status, (name, rest.text)
            if code is not None:
                assert set(rest.json()) == ERROR_KEYS and rest.json()["error"] == code, (name, rest.text)
                assert rest.headers.get("www-authenticate", "").startswith("Bearer") or status == 403, name
            expected = {200: "OK", 401: "UNAUTHENTICATED", 403: "FORBIDDEN"}[status]
            assert gql_code == expected, (name, gql.text)
    refused_ws = await _ws_close_code(cluster, _rs256(aud="another-service"))
    figure("S13", cases=len(outcomes), ws_wrong_aud_close=refused_ws, outcomes=outcomes)
    assert refused_ws == 4403


async def _ws_close_code(cluster: Cluster, token: str) -> int | None:
    async with connect(cluster.ws_url(), subprotocols=[TRANSPORT_WS]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert message["type"] != "connection_ack", message
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


async def _health_while(cluster: Cluster, abuse: Any) -> tuple[list[float], Any]:
    """Run `abuse` while probing /healthz every 20 ms: (health answer times, abuse result)."""
    times: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=cluster.apis[0].url, timeout=5) as client:
            while not done.is_set():
                started = time.monotonic()
                assert (await client.get("/healthz")).status_code == 200
                times.append(time.monotonic() - started)
                await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    try:
        result = await abuse
    finally:
        done.set()
        await prober
    return times, result


def _abusive_queries() -> dict[str, Any]:
    deep = '{ __type(name: "Job") { ' + "fields { type { " * 25 + "name" + " } }" * 25 + " } }"
    return {
        "depth-50": {"query": deep},
        "aliases-1000": {"query": "{ " + " ".join(f"a{i}: jobs {{ id }}" for i in range(1000)) + " }"},
        "aliases-16": {"query": "{ " + " ".join(f"a{i}: jobs {{ id }}" for i in range(16)) + " }"},
        "query-60kB": {"query": "{ jobs { id } }" + "#" * 60_000},
        "batch": [{"query": "{ jobs { id } }"}] * 10,
        "no-query": {"variables": {}},
    }


async def test_s14_graphql_abuse_is_refused_fast_and_the_server_stays_responsive(cluster: Cluster) -> None:
    results: dict[str, tuple[int, str, float]] = {}

    async def abuser() -> None:
        async with cluster.client(timeout=10) as client:
            deadline = time.monotonic() + ABUSE_SECONDS
            while time.monotonic() < deadline:
                for name, body in _abusive_queries().items():
                    started = time.monotonic()
                    response = await client.post("/graphql", json=body)
                    took = time.monotonic() - started
                    code = response.json()["errors"][0]["extensions"]["code"]
                    results[name] = (response.status_code, code, max(took, results.get(name, (0, "", 0.0))[2]))
                started = time.monotonic()
                huge = await client.post("/graphql", json={"query": "{ jobs { id } }" + " " * 1_000_000})
                results["query-1MB"] = (huge.status_code, huge.json()["error"], time.monotonic() - started)

    async def abuse() -> None:
        await asyncio.gather(*(abuser() for _ in range(ABUSERS)))

    health, _ = await _health_while(cluster, abuse())
    ws_close = await _ws_oversized_subscribe(cluster)
    health.sort()
    figure(
        "S14",
        refusals=results,
        health_p50_ms=health[len(health) // 2] * 1000,
        health_p90_ms=health[int(len(health) * 0.9)] * 1000,
        health_max_ms=health[-1] * 1000,
        health_probes=len(health),
        ws_1MB_close=ws_close,
    )
    for name, (status, code, took) in results.items():
        if name == "query-1MB":
            assert (status, code) == (413, "payload_too_large"), name  # refused by the transport, unread
        else:
            assert code == "BAD_USER_INPUT", (name, status)
        assert took < 1.0, (name, took)
    assert ws_close == 1009
    # Nine checks in ten: on a shared 2-core machine an idle server's slowest check is already ~250 ms
    # (CPU scheduling, not the server), so the maximum is printed, not asserted.
    assert health[int(len(health) * 0.9)] < 0.1, health[-5:]


async def _ws_oversized_subscribe(cluster: Cluster) -> int | None:
    """A subscribe message over WS_MAX_MESSAGE_BYTES (its variables inflated) closes the socket."""
    async with connect(cluster.ws_url(), subprotocols=[TRANSPORT_WS], max_size=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"token": cluster.token}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        query = "subscription S($id: ID) { jobStatus(id: $id) { id } }"
        payload = {"query": query, "variables": {"id": "x" * 1_000_000}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


async def test_s15_oversized_and_malformed_bodies_get_413_or_400_quickly(cluster: Cluster) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    cases: dict[str, tuple[str, str, bytes, dict[str, str], int]] = {
        "json-10MB": ("POST", "/api/jobs", b'{"id": "' + b"x" * 10_000_000 + b'"}', {}, 413),
        "json-10MB-chunked": ("POST", "/api/jobs", b"", {"transfer-encoding": "chunked"}, 413),
        "deep-nesting": ("POST", "/api/jobs", deep.encode(), {}, 400),
        "deep-nesting-patch": ("PATCH", "/api/jobs/metadata-sync", b'{"enabled": ' + deep.encode() + b"}", {}, 400),
        "invalid-utf8": ("POST", "/api/jobs", b'{"id": "\xff\xfe", "name": "\xc3\x28"}', {}, 400),
        "invalid-utf8-patch": ("PATCH", "/api/jobs/metadata-sync", b'{"enabled": "\xff"}', {}, 400),
        "not-json": ("PATCH", "/api/jobs/metadata-sync", b"enabled=true", {}, 400),
        "graphql-invalid-utf8": ("POST", "/graphql", b'{"query": "{ jobs { id \xff } }"}', {}, 400),
        "graphql-deep-nesting": (
            "POST",
            "/graphql",
            b'{"query": "{ jobs { id } }", "variables": ' + deep.encode() + b"}",
            {},
            400,
        ),
    }
    figures: dict[str, tuple[int, float]] = {}
    async with cluster.client(timeout=30) as client:
        for name, (method, path, body, headers, status) in cases.items():
            content: Any = body
            if name.endswith("chunked"):
                content = _chunks(b'{"id": "' + b"x" * 10_000_000 + b'"}')
            started = time.monotonic()
            response = await client.request(
                method, path, content=content, headers={"content-type": "application/json", **headers}
            )
            took = time.monotonic() - started
            figures[name] = (response.status_code, round(took * 1000))
            assert response.status_code == status, (name, response.text[:300])
            if path != "/graphql":
                assert set(response.json()) >= ERROR_KEYS, (name, response.text[:300])
            assert took < 2.0, (name, took)
        unchanged = await client.get("/api/jobs/metadata-sync")
    figure("S15", cases=figures)
    assert unchanged.json()["enabled"] is True


async def _chunks(body: bytes, size: int = 64 * 1024) -> Any:
    for offset in range(0, len(body), size):
        yield body[offset : offset + size]


async def test_s16_mass_assignment_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    async with cluster.client() as client:
        before = (await client.get("/api/jobs/metadata-sync")).json()
        refusals: dict[str, tuple[int, str]] = {}
        for field, value in {
            "running": True,
            "lastRun": "2020-01-01T00:00:00.000Z",
            "id": "hijacked",
            "builtin": False,
            "lastResult": "success",
            "nextRun": "2020-01-01T00:00:00.000Z",
            "type": "http_request",
            "payload": {"url": "http://evil.example"},
            "version": 99,
            "consecutiveFailures": 0,
        }.items():
            response = await client.patch("/api/jobs/metadata-sync", json={"enabled": False, field: value})
            refusals[field] = (response.status_code, response.json()["error"])
            assert response.status_code == 400, (field, response.text)
        mutation = 'mutation { updateJob(id: "metadata-sync", enabled: false, running: true) { __typename } }'
        gql = (await client.post("/graphql", json={"query": mutation})).json()
        after = (await client.get("/api/jobs/metadata-sync")).json()
    figure("S16", refusals=refusals, graphql=gql["errors"][0]["extensions"]["code"])
    assert gql["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert after == before
