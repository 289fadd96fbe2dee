"""Former path of :mod:`fedmoap.run.cli`, kept because it is public: the ``fedmoap`` console
script of an install made before the move imports ``fedmoap.cli:main``, and the first-run
notebook taught ``from fedmoap.cli import parse_fit``."""

from fedmoap.run.cli import build_parser, main, parse_fit  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
