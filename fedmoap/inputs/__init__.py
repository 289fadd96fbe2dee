"""Input providers: what a client's batches are made of (frozen features, decoded pixels) and the
per-client federated inputs built from them for the inputs a method declares."""

__all__ = []
