"""For the `tortoise` CLI only (`makemigrations`); the service itself never imports this module."""

from app.config import get_settings
from app.db import tortoise_config

TORTOISE_ORM = tortoise_config(get_settings(app_env="development", jwt_secret="x" * 32))
