"""The federation: the run configuration, who trains in which round, local training, the client
store, privacy, the round loop, evaluation and its protocols, the results schema, and the one
assembly of all of these (:func:`fedmoap.federation.build.build_federation`)."""

__all__ = []
