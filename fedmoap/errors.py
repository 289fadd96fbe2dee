"""User-facing errors: the CLI prints their message alone and exits non-zero."""

__all__ = ["FedmoapError"]


class FedmoapError(Exception):
    """A problem with the user's input (config, data, checkpoint) that names its culprit."""
