"""A griffe extension for the API reference (loaded by mkdocstrings, see mkdocs.yml).

1. ``Example:`` and ``Example (title):`` sections in stoax's Google-style docstrings are read
   as ``Examples:``, so their doctests render as code blocks rather than as ``>>>`` paragraphs.
2. An ``Args:`` entry naming several parameters (``stride, dilation: ...``) is read as one entry
   per parameter with the same description.
3. ``stoax.Module`` subclasses get their dataclass ``__init__`` (stoax applies ``dataclass`` in
   ``__init_subclass__``, which griffe cannot see statically): the signature shows the fields,
   and an ``Args:`` section on the class documents real parameters.
4. Sphinx roles (``:func:`stoax.random.dropout```, ``:class:`~stoax.nn.Linear```) are shown as
   inline code: Markdown would print them literally.
5. A class that defines or inherits ``__call__`` (every layer) gets a "Called as" line under
   its summary, with the call's signature (``x, *, key=None, mask=None``), and the ``Args:`` of
   ``__call__``'s docstring as a "Call arguments" list: the API reference documents how a layer
   is called, not only how it is built.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# "Example:" or "Example (what it shows):" on a line of its own.
_EXAMPLE = re.compile(
    r"^(?P<indent>[ \t]*)Examples?(?: \((?P<title>[^\n]*)\))?:[ \t]*$", re.MULTILINE
)
_MODULE_BASE = "stoax._module.Module"


def _examples_section(match: re.Match) -> str:
    indent, title = match["indent"], match["title"]
    if not title:
        return f"{indent}Examples:"
    return f"{indent}Examples:\n{indent}    {title[0].upper()}{title[1:]}:\n"


_ARGS = re.compile(r"^(?P<indent>[ \t]*)(Args|Arguments|Parameters|Params):[ \t]*$")
_GROUPED = re.compile(r"^(?P<indent>[ \t]*)(?P<names>\w+(?:, \w+)+):(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_grouped_args(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    section_indent = None
    while i < len(lines):
        line = lines[i]
        if m := _ARGS.match(line):
            section_indent = len(m["indent"])
        elif line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None
        m = _GROUPED.match(line) if section_indent is not None else None
        if m is None:
            out.append(line)
            i += 1
            continue
        body = [m["rest"]]
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(m["indent"])):
            body.append("\n" + lines[i])
            i += 1
        for name in m["names"].split(", "):
            out.append(f"{m['indent']}{name}:{''.join(body)}")
    return "\n".join(out)


# A Sphinx cross-reference role: :func:`name`, :class:`~stoax.nn.Linear` (``~``: last part only).
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _render_roles(text: str) -> str:
    """Sphinx roles as inline code (Markdown shows them literally otherwise)."""

    def code(m: re.Match) -> str:
        target = m["target"]
        shown = target.rsplit(".", 1)[-1] if m["tilde"] else target
        return f"`{shown}`"

    return _ROLE.sub(code, text)


def _call_signature(name: str, call: griffe.Function) -> str:
    """``Name(...)(x, *, key=None)``: how an instance is called, from ``__call__``'s parameters."""
    kinds = griffe.ParameterKind
    parts: list[str] = []
    star = False
    for p in call.parameters:
        if p.name == "self":
            continue
        if p.kind is kinds.var_positional:
            parts.append(f"*{p.name}")
            star = True
            continue
        if p.kind is kinds.var_keyword:
            parts.append(f"**{p.name}")
            continue
        if p.kind is kinds.keyword_only and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is None else f"{p.name}={p.default}")
    return f"{name}(...)({', '.join(parts)})"


def _own_or_inherited_call(cls: griffe.Class) -> griffe.Function | None:
    """The class's ``__call__``, or the one it inherits (``MaxPool`` from a private base)."""
    try:
        call = cls.all_members.get("__call__")
        if call is not None and call.is_alias:
            call = call.final_target
    except Exception:  # an unresolvable base: document what the class itself shows
        call = cls.members.get("__call__")
    if call is None or call.is_alias or not call.is_function:
        return None
    if call.parent is not None and call.parent.path == _MODULE_BASE:
        return None
    return call


def _call_docs(docstring: griffe.Docstring) -> tuple[str, str]:
    """``__call__``'s summary (one line) and its ``Args:`` as a Markdown list, for the layer's
    entry: mkdocstrings does not render ``__call__`` itself (a private name)."""
    text = _render_roles(docstring.value)
    sections = griffe.parse_google(griffe.Docstring(text, parent=docstring.parent), warnings=False)
    intro, items = "", []
    for section in sections:
        if section.kind is griffe.DocstringSectionKind.text and not intro:
            intro = section.value.split("\n\n", 1)[0].replace("\n", " ")
        elif section.kind is griffe.DocstringSectionKind.parameters:
            for p in section.value:
                description = " ".join(p.description.split())
                items.append(f"- `{p.name}`: {description}")
    return intro, "\n".join(items)


class StoaxDocs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            value = _EXAMPLE.sub(_examples_section, obj.docstring.value)
            obj.docstring.value = _render_roles(_split_grouped_args(value))
        if obj.is_class:
            self._add_dataclass_init(obj)
            self._document_call(obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)

    def _add_dataclass_init(self, cls: griffe.Class) -> None:
        if "__init__" in cls.members or cls.path == _MODULE_BASE:
            return
        try:
            mro = cls.mro()
        except Exception:  # an unresolvable base: leave the class as griffe saw it
            return
        if not any(base.path == _MODULE_BASE for base in mro):
            return
        for base in mro:  # a parent with a hand-written __init__ decides the signature
            if "__init__" in base.members and base.path != _MODULE_BASE:
                return
        params: dict[str, griffe.Parameter] = {}
        for owner in [*reversed(mro), cls]:
            if owner.path == _MODULE_BASE:
                continue
            for name, member in owner.members.items():
                if member.is_alias or not member.is_attribute or member.annotation is None:
                    continue
                if "property" in member.labels or (
                    "class-attribute" in member.labels
                    and "instance-attribute" not in member.labels
                    and member.value is None
                ):
                    continue
                params[name] = self._parameter(member)
        positional = [p for p in params.values() if p.kind is not griffe.ParameterKind.keyword_only]
        keyword = [p for p in params.values() if p.kind is griffe.ParameterKind.keyword_only]
        init = griffe.Function(
            "__init__",
            lineno=0,
            endlineno=0,
            parent=cls,
            parameters=griffe.Parameters(
                griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
                *positional,
                *keyword,
            ),
            returns="None",
        )
        cls.set_member("__init__", init)

    @staticmethod
    def _document_call(cls: griffe.Class) -> None:
        call = _own_or_inherited_call(cls)
        if call is None or cls.docstring is None:
            return
        line = f"Called as `{_call_signature(cls.name, call)}`."
        arguments = ""
        if call.docstring is not None:
            intro, arguments = _call_docs(call.docstring)
            line += f" {intro}" if intro else ""
        if arguments:
            line += f"\n\n**Call arguments**\n\n{arguments}"
        # After the summary -- and after the block a summary ending in ":" introduces (the
        # LSTM's equations), which must stay next to it.
        blocks = cls.docstring.value.split("\n\n")
        at = 1
        while at < len(blocks) and blocks[at - 1].rstrip().endswith(":"):
            at += 1
        cls.docstring.value = "\n\n".join([*blocks[:at], line, *blocks[at:]])

    @staticmethod
    def _parameter(member: griffe.Attribute) -> griffe.Parameter:
        value = member.value
        default: Any = value
        kind = griffe.ParameterKind.positional_or_keyword
        if isinstance(value, griffe.ExprCall) and str(value.function).split(".")[-1] == "field":
            default = None
            for arg in value.arguments:
                if isinstance(arg, griffe.ExprKeyword):
                    if arg.name == "default":
                        default = arg.value
                    elif arg.name == "default_factory":
                        default = griffe.ExprCall(function=arg.value, arguments=[])
                    elif arg.name == "kw_only" and str(arg.value) == "True":
                        kind = griffe.ParameterKind.keyword_only
        return griffe.Parameter(
            member.name, annotation=member.annotation, kind=kind, default=default
        )
