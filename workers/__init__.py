"""The worker definition (settings) and the built-in job types (handlers).

`arq workers.WorkerSettings` reads `WorkerSettings` from here: it is refused with a one-line message naming
`jobs-gateway worker`, the standalone worker (see workers/settings.py for why).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Exits the interpreter, even from a hasattr(): the one caller that asks for it is arq's CLI, which must stop
    # here with this message rather than run a worker that cannot take triggers.
    if name == "WorkerSettings":
        from workers.settings import ARQ_CLI_REFUSED

        raise SystemExit(ARQ_CLI_REFUSED)
    raise AttributeError(name)
