"""One flag per settings field: `--field_name value` or `--field_name=value`, as img2dataset.

Values are parsed like python-fire does for img2dataset users: Python literals where they
parse (`'[]'`, `"['noai']"`, `None`, `True`, `1e9`), with bare words inside them taken as
strings as fire does (`[noai,noindex]`, `[hash_col,sha256]`), plain strings otherwise;
pydantic then validates them against the field's type. A bare `--flag` means True and, for a
boolean field, `--noflag` means False, as in python-fire.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel


def parse_value(text: str) -> Any:
    if text in ("inf", "+inf", "-inf"):
        return float(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return text
    if not isinstance(tree.body, ast.List | ast.Tuple | ast.Dict | ast.Set):
        return text  # `a.b`, `x-y`: a plain string, not an expression
    try:
        return ast.literal_eval(_BareWords().visit(tree))
    except ValueError:
        return text


class _BareWords(ast.NodeTransformer):
    """python-fire's leniency: a bare name inside a literal is the string it spells."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(ast.Constant(node.id), node)


def add_model_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    skip: Iterable[str] = (),
    group_title: str | None = None,
) -> None:
    target: Any = parser.add_argument_group(group_title) if group_title else parser
    existing = {a.dest for a in parser._actions}
    skipped = set(skip)
    for name, field in model.model_fields.items():
        if name in skipped or name in existing:
            continue
        shown = " (required)"
        if not field.is_required():
            # A default_factory's value is shown when it is a container (a fresh list per
            # model); a computed value (this host and pid) belongs to the run, not the help.
            default = field.get_default(call_default_factory=True, validated_data={})
            computed = field.default_factory is not None and not isinstance(
                default, list | dict | tuple | set | frozenset
            )
            shown = (
                ""
                if default is None or callable(default) or computed
                else f" (default: {default!r})"
            )
        target.add_argument(
            f"--{name}",
            dest=name,
            nargs="?",
            const="True",
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=(field.description or "") + shown,
        )
        if _is_bool(field.annotation) and f"no{name}" not in model.model_fields:
            target.add_argument(
                f"--no{name}",
                dest=name,
                action="store_const",
                const="False",
                default=argparse.SUPPRESS,
                help=f"same as --{name}=False",
            )


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or set(get_args(annotation)) == {bool, type(None)}


def _is_text(annotation: Any) -> bool:
    """str or str | None: keep the text as typed (`--url_col 123` is the column "123")."""
    return annotation is str or set(get_args(annotation)) == {str, type(None)}


def model_kwargs(ns: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The flags the user gave for `model`'s fields (absent ones fall back to env/defaults).
    A value that is not text (img2dataset's Python API passes Python values) is taken as is."""
    given = vars(ns)
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in given:
            continue
        text = given[name]
        if not isinstance(text, str):
            out[name] = text
        elif _is_text(field.annotation):
            out[name] = None if text == "None" else text
        else:
            out[name] = parse_value(text)
    return out
