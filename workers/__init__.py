"""arq workers. `arq workers.WorkerSettings` builds its settings from the environment when arq asks."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from workers.settings import settings_class

        return settings_class()
    raise AttributeError(name)
