"""Federated prompt-learning methods.

Every module of this package is imported, and every :class:`Method` subclass with a ``name``
becomes a ``--method`` choice: adding a method is adding one file. A method kept in another
package is chosen by its class path (``--method mypkg.MyMethod``) without registering anything.
"""

from __future__ import annotations

import importlib
import pkgutil

from fedmoap.aggregate import weighted_mean
from fedmoap.methods.base import ClientModule, FedAvgServer, Method, RunContext, Server

__all__ = ["ClientModule", "FedAvgServer", "Method", "RunContext", "Server", "weighted_mean", "registry", "resolve"]

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")


def registry() -> dict[str, type[Method]]:
    """Short name -> method class, for every imported :class:`Method` subclass with a name."""
    out: dict[str, type[Method]] = {}
    stack = list(Method.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        name = cls.__dict__.get("name")
        if name:
            if name in out and out[name] is not cls:
                raise RuntimeError(f"two methods are named {name!r}: {out[name]} and {cls}")
            out[name] = cls
    return dict(sorted(out.items()))


def resolve(name: str) -> str:
    """The class path of the method called ``name`` (a short name); other strings unchanged."""
    cls = registry().get(name.lower()) if isinstance(name, str) else None
    return f"{cls.__module__}.{cls.__qualname__}" if cls else name
