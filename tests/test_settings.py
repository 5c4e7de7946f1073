"""`app.platform.config.Settings`: refusing configurations that cannot run safely, and where values come from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from app.platform.config import Settings, get_settings, redacted
from tests.conftest import SECRET

pytestmark = pytest.mark.sqlite_only  # settings parsing: no database involved

ENV_NAMES = (
    "APP_ENV",
    "JWT_SECRET",
    "JWT_ALGORITHM",
    "JWT_PUBLIC_KEY",
    "JWT_PRIVATE_KEY",
    "REDIS_URL",
    "LOG_LEVEL",
    "JOB_TYPE_MODULES",
    "SCHEDULER_TIMEZONE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the developer's environment nor a `.env` in the working directory leaks into these tests."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_production_without_secret_names_jwt_secret() -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        get_settings(_env_file=None, app_env="production")


def test_production_is_the_default_environment() -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        get_settings(_env_file=None)


@pytest.mark.parametrize("env", ["production", "development", "test"])
def test_short_secret_is_refused(env: str) -> None:
    with pytest.raises(ValueError, match=r"JWT_SECRET.*32 bytes"):
        get_settings(_env_file=None, app_env=env, jwt_secret="s" * 31)


@pytest.mark.parametrize("secret", ["changethis", "CHANGETHIS", "secret"])
def test_placeholder_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        get_settings(_env_file=None, app_env="production", jwt_secret=secret)


@pytest.mark.parametrize(("algorithm", "size"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_an_hs_secret_is_at_least_its_hash_size(algorithm: str, size: int) -> None:
    assert get_settings(_env_file=None, jwt_algorithm=algorithm, jwt_secret="s" * size).jwt_algorithm == algorithm
    with pytest.raises(ValueError, match=rf"JWT_SECRET.*at least {size} bytes for {algorithm}"):
        get_settings(_env_file=None, jwt_algorithm=algorithm, jwt_secret="s" * (size - 1))


def test_leeway_is_capped() -> None:
    assert get_settings(_env_file=None, jwt_secret="s" * 32, jwt_leeway_seconds=300).jwt_leeway_seconds == 300
    with pytest.raises(ValueError, match="jwt_leeway_seconds"):
        get_settings(_env_file=None, jwt_secret="s" * 32, jwt_leeway_seconds=301)


def test_secrets_and_passwords_stay_out_of_reprs_errors_and_outputs() -> None:
    settings = get_settings(
        _env_file=None,
        jwt_secret="t" * 40,
        database_url="postgres://jobs:db-password@db:5432/jobs",
        redis_url="redis://:redis-password@redis:6379/0",
    )
    shown = repr(settings) + str(settings)
    for secret in ("t" * 40, "db-password", "redis-password"):
        assert secret not in shown
    assert redacted(settings.database_url) == "postgres://jobs:***@db:5432/jobs"
    assert redacted(settings.redis_url) == "redis://:***@redis:6379/0"
    assert redacted("sqlite://data/x.sqlite3") == "sqlite://data/x.sqlite3"
    # A refused setting's error never shows the input: the secret, or a password of a URL given beside it.
    for given in (
        {"jwt_secret": "short-secret-value"},
        {"jwt_secret": "short-secret-value", "database_url": "postgres://u:db-password@h/db"},
        {"jwt_secret": "s" * 40, "redis_url": "redis://:redis-password@h:6379/0", "port": "not-a-port"},
    ):
        with pytest.raises(ValueError) as refused:
            get_settings(_env_file=None, **given)
        for secret in ("short-secret-value", "db-password", "redis-password"):
            assert secret not in str(refused.value), refused.value


def test_secret_length_is_counted_in_bytes() -> None:
    assert get_settings(_env_file=None, jwt_secret="s" * 32).jwt_secret == SecretStr("s" * 32)
    assert get_settings(_env_file=None, jwt_secret="é" * 16).jwt_secret == SecretStr(
        "é" * 16
    )  # 16 characters, 32 bytes
    with pytest.raises(ValueError, match="JWT_SECRET"):
        get_settings(_env_file=None, jwt_secret="é" * 15 + "s")  # 31 bytes


def test_development_without_secret_warns_and_uses_a_random_one() -> None:
    with pytest.warns(UserWarning, match="JWT_SECRET"):
        first = get_settings(_env_file=None, app_env="development")
    with pytest.warns(UserWarning, match="JWT_SECRET"):
        second = get_settings(_env_file=None, app_env="development")
    assert first.jwt_secret and len(first.jwt_secret.get_secret_value().encode()) >= 32
    assert first.jwt_secret != second.jwt_secret


def test_environment_overrides_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"APP_ENV=test\nJWT_SECRET={SECRET}\nREDIS_URL=redis://from-dotenv:6379/0\nLOG_LEVEL=debug\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")
    settings = get_settings()
    assert settings.redis_url == "redis://from-env:6379/0"
    # The .env file was read: what only it sets is there.
    assert settings.jwt_secret is not None
    assert (settings.app_env, settings.jwt_secret.get_secret_value(), settings.log_level) == ("test", SECRET, "DEBUG")


def test_job_type_modules_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_TYPE_MODULES", "a.b, c.d")
    settings = get_settings(_env_file=None, app_env="test", jwt_secret=SECRET)
    assert settings.job_type_modules == ["a.b", "c.d"]


def test_job_type_modules_default_empty() -> None:
    assert get_settings(_env_file=None, app_env="test", jwt_secret=SECRET).job_type_modules == []


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus_Mons"):
        get_settings(_env_file=None, app_env="test", jwt_secret=SECRET, scheduler_timezone="Mars/Olympus_Mons")


def test_known_timezone_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_TIMEZONE", "Europe/Paris")
    settings = get_settings(_env_file=None, app_env="test", jwt_secret=SECRET)
    assert settings.tz.key == "Europe/Paris"


def test_rs256_without_public_key_is_refused() -> None:
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        get_settings(_env_file=None, app_env="production", jwt_algorithm="RS256", jwt_secret=SECRET)


def test_no_dotenv_is_read_when_told_not_to(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://from-dotenv:6379/0\n", encoding="utf-8")
    settings = Settings(_env_file=None, app_env="test", jwt_secret=SECRET)  # type: ignore[call-arg]
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert get_settings(app_env="test", jwt_secret=SECRET).redis_url == "redis://from-dotenv:6379/0"
