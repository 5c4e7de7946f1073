"""Bearer-token authentication and the `settings.update` permission, on real routes of the real app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app import cli
from app.api.auth import ADMIN_PERMISSION
from app.platform.config import Settings
from tests.conftest import SECRET, make_token, running_app

# Tokens are checked before any handler runs: no dialect-dependent behaviour (the routes' own tests run on both).
pytestmark = pytest.mark.sqlite_only

OTHER_SECRET = "another-secret-" + "y" * 40  # 40+ bytes: a well-formed key, just not ours
ROUTES = [("GET", "/api/jobs"), ("POST", "/api/jobs/metadata-sync/trigger")]
ERROR_KEYS = {"success", "error", "message"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def hs256(claims: dict[str, Any], secret: str | bytes = SECRET, header: dict[str, Any] | None = None) -> str:
    """Sign by hand, so that PyJWT's own encode-side checks cannot hide a malformed claim."""
    key = secret.encode() if isinstance(secret, str) else secret
    signing_input = f"{b64json(header or {'alg': 'HS256', 'typ': 'JWT'})}.{b64json(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "5", "permissions": [ADMIN_PERMISSION], "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def alg_none_token() -> str:
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims())}."


# (case id, headers built from the app's settings, expected status, expected error code or None for success)
HeaderFactory = Callable[[Settings], dict[str, str]]
CASES: list[tuple[str, HeaderFactory, int, str | None]] = [
    ("missing-header", lambda _: {}, 401, "missing_token"),
    ("wrong-scheme", lambda _: {"Authorization": "Basic abc"}, 401, "invalid_token"),
    ("bearer-without-token", lambda _: {"Authorization": "Bearer"}, 401, "invalid_token"),
    ("bearer-blank-token", lambda _: {"Authorization": "Bearer    "}, 401, "invalid_token"),
    ("malformed", lambda _: bearer("not.a.jwt"), 401, "invalid_token"),
    ("bad-signature", lambda _: bearer(hs256(claims(), OTHER_SECRET)), 401, "invalid_token"),
    ("alg-none", lambda _: bearer(alg_none_token()), 401, "invalid_token"),
    ("expired", lambda _: bearer(hs256(claims(exp=int(time.time()) - 120))), 401, "token_expired"),
    ("no-sub", lambda _: bearer(hs256(claims(sub=None))), 401, "invalid_token"),
    ("no-exp", lambda _: bearer(hs256(claims(exp=None))), 401, "invalid_token"),
    ("nbf-in-future", lambda _: bearer(hs256(claims(nbf=int(time.time()) + 120))), 401, "invalid_token"),
    ("oversized", lambda _: bearer(hs256(claims(pad="x" * 10_000))), 401, "invalid_token"),
    ("sub-not-string", lambda _: bearer(hs256(claims(sub=5))), 401, "invalid_token"),
    ("permissions-a-string", lambda _: bearer(hs256(claims(permissions=ADMIN_PERMISSION))), 401, "invalid_token"),
    (
        "permissions-not-strings",
        lambda _: bearer(hs256(claims(permissions=[ADMIN_PERMISSION, 1]))),
        401,
        "invalid_token",
    ),
    ("without-a-jobs-permission", lambda s: bearer(make_token(s, permissions=["billing.read"])), 403, "forbidden"),
    ("no-permissions-claim", lambda _: bearer(hs256(claims(permissions=None))), 403, "forbidden"),
    ("valid", lambda s: bearer(make_token(s)), 200, None),
]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["success"] is False
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    if status == 401:
        assert response.headers.get("www-authenticate", "").startswith("Bearer"), response.headers


async def trigger_evidence(client: httpx.AsyncClient, settings: Settings) -> tuple[int, int]:
    """(run logs of metadata-sync, jobs.trigger activity entries), read with a good token."""
    good = bearer(make_token(settings))
    logs = await client.get("/api/jobs/metadata-sync/logs", headers=good)
    activity = await client.get("/api/activity", params={"event": "jobs.trigger"}, headers=good)
    assert logs.status_code == 200 and activity.status_code == 200
    return logs.json()["total"], activity.json()["total"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(("headers_for", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_auth_matrix(
    client: httpx.AsyncClient,
    settings: Settings,
    method: str,
    path: str,
    headers_for: HeaderFactory,
    status: int,
    code: str | None,
) -> None:
    response = await client.request(method, path, headers=headers_for(settings))
    if code is None:
        assert response.status_code == 200, response.text
        if method == "GET":
            assert "metadata-sync" in {job["id"] for job in response.json()}
        else:
            assert response.json() == {"success": True, "message": "Job triggered successfully"}
    else:
        assert_error(response, status, code)
    if method == "POST":
        await asyncio.sleep(0.3)
        runs, triggers = await trigger_evidence(client, settings)
        if code is None:
            assert triggers == 1  # the evidence is real: an accepted trigger shows up here
        else:
            assert (runs, triggers) == (0, 0)


@pytest.mark.parametrize("crit", [["€"], ['a", error_description="forged'], ["x\r\nSet-Cookie: a=b"]])
async def test_nothing_of_a_refused_token_reaches_a_header(client: httpx.AsyncClient, crit: list[str]) -> None:
    """Its header's text (`crit` names an extension PyJWT refuses, quoting it in its message) neither breaks the
    response's encoding (a 500) nor its header's syntax."""
    token = hs256(claims(), header={"alg": "HS256", "typ": "JWT", "crit": crit})
    response = await client.get("/api/jobs", headers=bearer(token))
    assert_error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"] == (
        'Bearer realm="jobs-gateway", error="invalid_token", error_description="The token is invalid"'
    )
    graphql = await client.post("/graphql", json={"query": "{ jobs { id } }"}, headers=bearer(token))
    assert graphql.status_code == 200
    assert [e["extensions"]["code"] for e in graphql.json()["errors"]] == ["UNAUTHENTICATED"]


async def test_an_expired_token_is_told_so_in_the_challenge(client: httpx.AsyncClient, settings: Settings) -> None:
    expired = hs256(claims(exp=int(time.time()) - 3600))
    response = await client.get("/api/jobs", headers=bearer(expired))
    assert_error(response, 401, "token_expired")
    assert response.headers["www-authenticate"].endswith('error_description="The token has expired"')


async def test_expiry_within_leeway_is_accepted(client: httpx.AsyncClient, settings: Settings) -> None:
    assert settings.jwt_leeway_seconds == 30
    response = await client.get("/api/jobs", headers=bearer(hs256(claims(exp=int(time.time()) - 10))))
    assert response.status_code == 200, response.text


async def test_not_before_within_leeway_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/jobs", headers=bearer(hs256(claims(nbf=int(time.time()) + 10))))
    assert response.status_code == 200, response.text


async def test_leeway_setting_is_honoured(settings_factory: Callable[..., Settings]) -> None:
    strict = settings_factory(jwt_leeway_seconds=0)
    lenient = settings_factory(jwt_leeway_seconds=120)
    late = bearer(hs256(claims(exp=int(time.time()) - 60)))
    async with running_app(strict) as (_, client):
        assert_error(await client.get("/api/jobs", headers=late), 401, "token_expired")
    async with running_app(lenient) as (_, client):
        assert (await client.get("/api/jobs", headers=late)).status_code == 200


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/api/jobs", headers={"Authorization": f"bearer {make_token(settings)}"})
    assert response.status_code == 200, response.text


async def test_audience_and_issuer_are_enforced_when_configured(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(jwt_audience="jobs-gateway", jwt_issuer="https://auth.example")

    def variant(**update: Any) -> dict[str, str]:
        return bearer(make_token(settings.model_copy(update=update)))

    async with running_app(settings) as (_, client):
        ok = await client.get("/api/jobs", headers=bearer(make_token(settings)))
        assert ok.status_code == 200, ok.text
        for headers in (
            variant(jwt_audience="another-service"),
            variant(jwt_issuer="https://evil.example"),
            variant(jwt_audience=None),
            variant(jwt_issuer=None),
        ):
            assert_error(await client.get("/api/jobs", headers=headers), 401, "invalid_token")


def rsa_pem_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return public, private


async def test_rs256_tokens_and_algorithm_confusion(settings_factory: Callable[..., Settings]) -> None:
    public, private = rsa_pem_pair()
    settings = settings_factory(jwt_algorithm="RS256", jwt_public_key=public, jwt_private_key=private, jwt_secret=None)
    _, foreign_private = rsa_pem_pair()
    async with running_app(settings) as (_, client):
        ok = await client.get("/api/jobs", headers=bearer(make_token(settings)))
        assert ok.status_code == 200, ok.text
        # HS256 keyed with the public key's PEM text: accepted only by a verifier that lets the token pick its alg.
        confused = hs256(claims(), public)
        assert_error(await client.get("/api/jobs", headers=bearer(confused)), 401, "invalid_token")
        foreign = jwt.encode(claims(), foreign_private, algorithm="RS256")
        assert_error(await client.get("/api/jobs", headers=bearer(foreign)), 401, "invalid_token")
        assert_error(await client.get("/api/jobs", headers=bearer(hs256(claims()))), 401, "invalid_token")


def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("JWT_ALGORITHM", "JWT_PUBLIC_KEY", "JWT_PRIVATE_KEY", "JWT_AUDIENCE", "JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("APP_ENV", "test")


def test_cli_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env(monkeypatch, tmp_path)
    cli.main(["token", "--sub", "7", "--permission", ADMIN_PERMISSION, "--ttl", "2h"])
    token = capsys.readouterr().out.strip()
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "7"
    assert decoded["permissions"] == [ADMIN_PERMISSION]
    expected_exp = datetime.now(UTC) + timedelta(hours=2)
    assert abs(decoded["exp"] - expected_exp.timestamp()) < 10


def test_cli_token_repeats_permissions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env(monkeypatch, tmp_path)
    cli.main(["token", "--sub", "8", "--permission", "a.read", "--permission", "b.write"])
    decoded = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert decoded["permissions"] == ["a.read", "b.write"]
    assert abs(decoded["exp"] - (time.time() + 3600)) < 10  # default ttl 1h


def test_cli_token_rejects_a_bad_ttl(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    clean_env(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["token", "--sub", "7", "--ttl", "2 hours"])
    assert exc.value.code == 2
