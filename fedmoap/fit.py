"""Former path of :mod:`fedmoap.run.fit`, kept because it is public: the first-run notebook
taught ``from fedmoap.fit import fit``."""

from fedmoap.run.fit import fit  # noqa: F401
