"""The recipe key reference, generated from the schema itself (so the documentation cannot drift).

Every key of :class:`~partwise.recipe.Recipe`, of each data kind, tokenisation and phase, and of the
built-in task kinds' ``task.args`` and ``model.args``: its type, default and the comment written
beside it in the schema's source.

Examples:
    >>> from partwise.recipe import recipe_keys_markdown
    >>> "| `training.grad_clip` |" in recipe_keys_markdown()
    True
"""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["recipe_keys_markdown", "field_comments"]


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}``: the ``#`` comment on a field's line(s) in ``cls``'s source, with the
    comment lines right below it that continue it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0]
    if not isinstance(body, ast.ClassDef):
        return {}
    spans = [(node.target.id, node.lineno, node.end_lineno or node.lineno) for node in body.body
             if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whether the line holds only the comment)
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            comments[row] = (tok.string.lstrip("#").strip(), lines[row - 1].strip().startswith("#"))
    out: dict[str, str] = {}
    for name, first, last in spans:
        words = [comments[r][0] for r in range(first, last + 1) if r in comments]
        row = last + 1
        while words and row in comments and comments[row][1]:
            words.append(comments[row][0])
            row += 1
        if words:
            out[name] = " ".join(words)
    return out


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(_strip_annotated(a) for a in typing.get_args(tp))
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_name(tp: Any) -> str:
    tp = _strip_annotated(tp)
    members = _union_args(tp)
    if members is not None:
        names = [_type_name(a) for a in members if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in members else "")
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"mapping {_type_name(key)} → {_type_name(value)}"
    if _is_model(tp):
        return "mapping"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(see below)"
        return f"`{value}`"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "null"
    value = field.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every field of ``model`` under ``prefix``; nested mappings follow."""
    comments = {}
    for cls in reversed(model.__mro__):  # a subclass's comment wins
        if _is_model(cls):
            comments.update(field_comments(cls))
    nested: list[tuple[str, list[type[BaseModel]]]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        tp = _strip_annotated(field.annotation)
        members = [m for m in (_union_args(tp) or (tp,)) if m is not type(None)]
        models = [m for m in members if _is_model(m)]
        kind = "one of the mappings below" if len(models) > 1 else _type_name(tp)
        yield key, kind, _default(field), comments.get(name, "") or (_summary(models[0]) if len(models) == 1 else "")
        if models:
            nested.append((key, models))
        for member in members:
            origin, args = typing.get_origin(member), typing.get_args(member)
            if origin is list and _is_model(_strip_annotated(args[0])):
                nested.append((f"{key}[i]", [_strip_annotated(args[0])]))
            elif origin is dict and _is_model(_strip_annotated(args[1])):
                nested.append((f"{key}.<part>", [_strip_annotated(args[1])]))
    for key, models in nested:
        yield from (_rows(models[0], f"{key}.") if len(models) == 1 else _variant_rows(models, f"{key}."))


def _summary(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    return doc.split("\n\n")[0].replace("\n", " ") if doc and model.__doc__ else ""


def _variant_rows(models: list[type[BaseModel]], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    """The rows of a tagged union (e.g. a tokenisation by ``tokenize``): the tag lists every variant,
    each other key says which variants have it."""
    tag = next(iter(models[0].model_fields))
    values = {m: typing.get_args(_strip_annotated(m.model_fields[tag].annotation))[0] for m in models}
    rows: dict[str, list[Any]] = {}
    for m in models:
        for key, kind, default, meaning in _rows(m, prefix):
            rows.setdefault(key, [kind, default, [], []])
            rows[key][2].append(values[m])
            if meaning:
                rows[key][3].append(f"{values[m]}: {meaning}" if key == f"{prefix}{tag}" else meaning)
    for key, (kind, default, having, meanings) in rows.items():
        if key == f"{prefix}{tag}":
            yield key, " \\| ".join(str(v) for v in having), "required", "; ".join(meanings)
        else:
            only = "" if len(having) == len(models) else f"({tag}: {', '.join(map(str, having))}) "
            yield key, kind, default, only + "; ".join(dict.fromkeys(meanings))


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k}` | {t} | {d} | {m.replace('|', chr(92) + '|')} |" for k, t, d, m in rows]
    return "\n".join(lines)


def _variants(tp: Any) -> list[type[BaseModel]]:
    return [m for m in (_union_args(_strip_annotated(tp)) or ()) if _is_model(m)]


def recipe_keys_markdown() -> str:
    """Markdown tables of every recipe key, generated from the schema (the docs' recipe key reference)."""
    from ._kinds import kind_class, kind_names
    from ._schema import Recipe

    out = ["## Every key", "", _table([r for r in _rows(Recipe, "") if not r[0].startswith("data.")])]
    data_field = Recipe.model_fields["data"]
    out += ["", "## `data`, by `data.name`"]
    for variant in _variants(data_field.annotation):
        name = variant.model_fields["name"].annotation
        out += ["", f"### `data.name: {typing.get_args(name)[0]}`", "", _table(list(_rows(variant, "data.")))]
    for kind_name in kind_names():
        kind = kind_class(kind_name)
        out += ["", f"## Task `{kind_name}`", ""]
        task_rows = list(_rows(kind.task_args, "task.args."))
        out += [_table(task_rows) if task_rows else "`task.args`: none."]
        for model_name, schema in sorted(kind.model_args.items()):
            out += ["", f"### `model.name: {model_name}`", "", _table(list(_rows(schema, "model.args.")))]
    return "\n".join(out) + "\n"
