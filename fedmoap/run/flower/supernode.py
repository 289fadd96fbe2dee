"""``flower-supernode`` with a shorter idle wait: ``python -m fedmoap.run.flower.supernode
[--poll-s S] FLOWER_SUPERNODE_ARGS...``.

Flower 1.42's SuperNode sleeps a fixed 3 s whenever the SuperLink has no message for it, and
0.5 s between looks for its ClientApp's reply: each exchange of a round waits up to 3.5 s whatever
the clients do, which dominates a round of small clients. This runs Flower's own SuperNode
(``flwr.supernode.cli.flower_supernode``, every option as it takes them) with those waits capped
at ``--poll-s`` (default 0.1 s) by rebinding the ``time`` module its loop
(``flwr.supernode.start_client_internal``) uses; nothing else changes. A Flower version whose
loop no longer has that module attribute is refused in one line."""

from __future__ import annotations

import sys
import time
import types

__all__ = ["capped_time", "main"]


def capped_time(poll_s: float) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` sleeps at most ``poll_s`` seconds."""
    out = types.ModuleType("time")
    out.__dict__.update({k: v for k, v in vars(time).items() if not k.startswith("__")})
    out.sleep = lambda s: time.sleep(min(float(s), poll_s))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run Flower's SuperNode with the capped waits; ``--poll-s S`` first, Flower's options after."""
    argv = list(sys.argv[1:] if argv is None else argv)
    poll_s = 0.1
    if argv[:1] == ["--poll-s"]:
        if len(argv) < 2:
            print("--poll-s needs a value", file=sys.stderr)
            return 2
        try:
            poll_s = float(argv[1])
        except ValueError:
            print(f"--poll-s {argv[1]!r} is not a number", file=sys.stderr)
            return 2
        if not poll_s > 0:
            print("--poll-s must be > 0", file=sys.stderr)
            return 2
        argv = argv[2:]
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if getattr(loop, "time", None) is not time:
        print("this Flower's SuperNode loop has no time module to cap: use flower-supernode", file=sys.stderr)
        return 2
    loop.time = capped_time(poll_s)
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
