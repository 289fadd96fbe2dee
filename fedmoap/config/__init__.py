"""A run's configuration below everything that runs it: the settings, their flags and checks, and
how a stored config is read and compared. It imports only the standard library, PyYAML and
:mod:`fedmoap.errors`, so the data, backbones and methods packages read their section from here
and the command line starts without torch.

- :mod:`fedmoap.config.sections`: the sections (``model``, ``data``, ``train``, ``fed``,
  ``fabric``, ``eval``, ``dp``), one dataclass each, every field documented where it is declared
  (the docstrings are ``fedmoap fit --help``); each section's ``problems()`` checks its own
  ranges; ``SECTIONS`` names them by key.
- :mod:`fedmoap.config.flags`: the metadata flags of a setting (``NEUTRAL``: it does not change a
  run's numbers; ``ADDED``: it came after runs made without it), for the sections and for method
  knobs.
- :mod:`fedmoap.config.typecheck`: every setting checked against its declared type.
- :mod:`fedmoap.config.yamlfile`: the user's YAML read strictly (repeated keys, size, kind).
- :mod:`fedmoap.config.digest`: the config digest of a stored config (plain data) and what runs
  made before a section, key or knob existed meant by its absence.

The whole run, the method with the sections, is :class:`~fedmoap.federation.config.RunConfig`
(it needs the method class, which sits above this package); checks spanning sections are
:mod:`fedmoap.run.validate`'s.
"""

__all__ = []
