"""A long-lived ClientApp executor for one SuperNode: ``python -m fedmoap.run.flower.worker
--runtime-api-address 127.0.0.1:PORT`` beside ``flower-supernode --isolation process --port PORT``.

Flower 1.42's own executor (``flower-superexec``) starts a fresh ``flwr-clientapp`` process for
every message, and that process handles one message and exits: each message imports torch,
Lightning and fedmoap and rebuilds the client (seconds). This executor takes the SuperNode's
ClientApp tasks one at a time in one process and runs each as ``flwr-clientapp`` does (pull the
task's message, Context, run and FAB; run the ClientApp; push the reply and the Context), without
exiting: the FAB is installed and the ClientApp loaded once per FAB, and
:mod:`fedmoap.run.flower.app`'s module-level cache keeps the node's built client between
messages. The node's client state still goes through its store and Context after every message,
so stopping this process loses nothing but time."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

__all__ = ["Executor", "main"]


class Executor:
    """ClientApp tasks of the SuperNode whose Runtime API is at ``address``, run in this process."""

    def __init__(self, address: str, poll_s: float = 0.05) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address, self.poll_s = address, poll_s
        self.apps: dict[str, Any] = {}
        """FAB hash -> the loaded ClientApp."""
        self.client = RuntimeHttpClient.from_server_address(
            server_address=address,
            insecure=True,
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def acquire(self) -> str | None:
        """The token of the SuperNode's next ClientApp task, if one is waiting."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return res.token if res.HasField("task") and res.token else None

    def app_of(self, run: Any, fab: Any) -> Any:
        """The ClientApp of ``fab``: installed and loaded on its first task."""
        if fab.hash_str not in self.apps:
            from flwr.cli.install import install_from_fab
            from flwr.clientapp.utils import get_load_client_app_fn

            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self.apps[fab.hash_str]

    def run_task(self, token: str) -> None:
        """One task as ``flwr-clientapp`` runs it; an exception becomes the reply's error."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        client = RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = pull_task_input(client)
            reply = self.app_of(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the reply carries it to the ServerApp
            logging.getLogger("fedmoap").exception("ClientApp raised an exception")
            details = f"{type(ex)}:<'{ex}'>"
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client=client, context=context, sub_status=status, details=details)
            finally:
                heartbeat.stop()
                client.close()

    def serve(self) -> None:
        """Take and run tasks until the process is stopped."""
        while True:
            token = self.acquire()
            if token is None:
                time.sleep(self.poll_s)
            else:
                self.run_task(token)


def main(argv: list[str] | None = None) -> int:
    """``python -m fedmoap.run.flower.worker --runtime-api-address HOST:PORT``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime-api-address", required=True, help="the SuperNode's --host:--port")
    ap.add_argument("--poll-s", type=float, default=0.05, help="seconds between asking for a task")
    a = ap.parse_args(argv)
    Executor(a.runtime_api_address, a.poll_s).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
