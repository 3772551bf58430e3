"""Run gcloud-tasks-emulator with its gRPC port on 127.0.0.1 instead of every interface.

The stock `gcloud-tasks-emulator start` listens on `[::]` and ignores any host option. This
launcher patches `grpc.server` so the emulator binds loopback only, then runs its CLI:

    .services/tasks-venv/bin/python scripts/tasks_emulator.py start --port 8123 --max-retries 3 -q

It runs in its own venv (`.services/tasks-venv`): the emulator pins `protobuf<5`, which the
project's Firestore client cannot share.
"""

from __future__ import annotations

from typing import Any

import grpc
from gcloud_tasks_emulator import __main__ as emulator_cli


def _patch_grpc_server() -> None:
    new_server = grpc.server

    def loopback_server(*args: Any, **kwargs: Any) -> Any:
        server = new_server(*args, **kwargs)
        bind = server.add_insecure_port

        def add_insecure_port(address: str) -> int:
            return int(bind(address.replace("[::]", "127.0.0.1")))

        server.add_insecure_port = add_insecure_port
        return server

    grpc.server = loopback_server


if __name__ == "__main__":
    _patch_grpc_server()
    emulator_cli.main()
