"""Griffe extension for the API pages: render the code's reST roles as Markdown code.

fedmoap's docstrings are written for ``--help`` and for reading in the source, so they use
Sphinx roles (``:class:`~fedmoap.federation.rounds.Federation```) and double-backtick literals. Markdown
renders the literal fine but shows a role's ``:class:`` prefix as text; this drops the prefix
(and the leading ``~``, keeping only the last dotted name, as Sphinx does).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|obj|data|exc|const):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RestRoles(griffe.Extension):
    """Rewrite ``:role:`target``` to a Markdown code span in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
