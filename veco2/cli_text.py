"""Text helpers shared by the command-line modules (:mod:`veco2.cli` and the ``register``
functions of the sub-commands); standard library only, so that importing them keeps
``veco2 --help`` and ``veco2 --version`` fast."""

from __future__ import annotations

import re


def plain_text(docstring: str) -> str:
    """A docstring as ``--help`` text: reStructuredText roles (``:mod:`x```), double backticks and the
    ``::`` of literal blocks become plain text."""
    text = re.sub(r":(?:mod|func|class|data|meth|attr):`~?([^`]+)`", r"\1", docstring)
    return text.replace("``", "").replace("::\n", ":\n")
