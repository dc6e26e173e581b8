"""MkDocs hook: the docstrings' Sphinx roles (:class:`~tsf_trt.x.Y`, :func:`f`), which mkdocstrings
shows as written, rendered as the name they point to in code type (`Y`, `f`), as Sphinx would."""

from __future__ import annotations

import re
from typing import Any

#: A role as mkdocstrings leaves it in the page: the role name, then its target in a code span.
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)</code>")


def name(match: re.Match[str]) -> str:
    """`~a.b.C` is shown as C (Sphinx's rule for the tilde), anything else in full."""
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """MkDocs event: every page's HTML, after mkdocstrings has rendered the docstrings."""
    return _ROLE.sub(name, html)
