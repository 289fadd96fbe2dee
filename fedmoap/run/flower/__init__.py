"""Every fedmoap method on Flower: a ServerApp and a ClientApp from ``fedmoap fit``'s run config
(:mod:`fedmoap.run.flower.app`), ``fedmoap flower`` (:mod:`fedmoap.run.flower.run`). Needs the
``flower`` extra (``pip install "fedmoap[flower]"``)."""

__all__ = []
