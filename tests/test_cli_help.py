"""`veco2 ... --help` reads as plain text: no reStructuredText markup leaks from the docstrings."""

import argparse
import re

from veco2.cli import build_parser, plain_text

MARKUP = re.compile(r"``|:(?:mod|func|class|data|meth|attr):`")


def _parsers(parser: argparse.ArgumentParser, path=("veco2",)):
    yield path, parser
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_text_is_plain():
    seen = []
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        assert not MARKUP.search(text), f"{' '.join(path)} --help: {MARKUP.search(text).group(0)!r} in\n{text}"
        seen.append(" ".join(path))
    assert {"veco2 pretrain", "veco2 finetune", "veco2 sweep", "veco2 bench pretrain", "veco2 data prepare"} <= set(seen)


def test_plain_text_drops_roles_and_literal_markers():
    assert plain_text("see :mod:`veco2.sweep` and ``--storage``::\n") == "see veco2.sweep and --storage:\n"
    assert plain_text(":func:`~veco2.x.f`") == "veco2.x.f"
