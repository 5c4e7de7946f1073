"""For the `tortoise` CLI only (`makemigrations`); the service itself never imports this module."""

from app.platform.config import get_settings
from app.platform.db import tortoise_config

TORTOISE_ORM = tortoise_config(get_settings(app_env="development", jwt_secret="x" * 32))
