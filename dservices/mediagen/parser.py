"""Parses MediaScript source into a :class:`~dservices.mediagen.syntax.Program` with Lark's
LALR(1) parser; a syntax error names the line, column, what was found and what was expected."""

from __future__ import annotations

import functools
from typing import Any

import lark
from lark import Token, Transformer, v_args
from lark.tree import Meta

from dservices.mediagen import syntax as s
from dservices.mediagen._grammar import GRAMMAR
from dservices.mediagen.errors import ScriptSyntaxError

#: Deepest nesting of the syntax tree accepted (the interpreter recurses on it).
MAX_DEPTH = 200

_DESCRIBED = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "ASSIGN_OP": "'='",
    "EQ_OP": "'=='",
    "CMP_OP": "'<'",
    "ADD_OP": "'+'",
    "MUL_OP": "'*'",
    "UNARY_OP": "'-'",
    "INCDEC": "'++'",
    "$END": "the end of the script",
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


@functools.cache
def _lark() -> lark.Lark:
    return lark.Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _describe(terminal: str) -> str:
    if terminal in _DESCRIBED:
        return _DESCRIBED[terminal]
    try:
        pattern = _lark().get_terminal(terminal).pattern
    except KeyError:
        return terminal
    return f"'{pattern.value}'" if pattern.type == "str" else terminal.lower()


#: Shown first when expected: what a script most often lacks.
_FIRST = ("';'", "')'", "']'", "'}'", "','", "a name", "'('", "'{'")


def _expected(names: set[str] | frozenset[str]) -> str:
    unique = {_describe(n) for n in names}
    described = [d for d in _FIRST if d in unique] + sorted(unique - set(_FIRST))
    if len(described) > 8:
        described = [*described[:8], "..."]
    return ", ".join(described)


def _unescape(raw: str, line: int, column: int) -> str:
    """Decodes a quoted string literal's escapes (\\n, \\t, \\uXXXX, \\" ...)."""
    out: list[str] = []
    body = raw[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "u":
            digits = body[i + 2 : i + 6]
            if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ScriptSyntaxError(
                    f"line {line}, column {column}: bad \\u escape in a string",
                    line=line,
                    column=column,
                    expected="four hex digits after \\u",
                )
            out.append(chr(int(digits, 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


def _pos(meta: Meta) -> tuple[int, int]:
    return meta.line, meta.column


@v_args(meta=True)
class _ToAst(Transformer[Token, Any]):
    """Lark tree -> syntax dataclasses (one method per grammar rule or alias)."""

    # Top level and statements.
    def start(self, meta: Meta, items: list[Any]) -> s.Program:
        functions: dict[str, s.Function] = {}
        body: list[s.Stmt] = []
        for item in items:
            if isinstance(item, s.Function):
                if item.name in functions:
                    raise _error(
                        item.line, item.column, f"function {item.name!r} is declared twice"
                    )
                functions[item.name] = item
            else:
                body.append(item)
        return s.Program(tuple(body), functions)

    def function_decl(self, meta: Meta, items: list[Any]) -> s.Function:
        name, *params, body = items
        params = [p for p in params if p is not None]
        seen: set[str] = set()
        for p in params:
            if p.name in seen:
                raise _error(p.line, p.column, f"parameter {p.name!r} is declared twice")
            seen.add(p.name)
        return s.Function(*_pos(meta), str(name), tuple(params), body)

    def param(self, meta: Meta, items: list[Any]) -> s.Param:
        return s.Param(*_pos(meta), str(items[0]), items[1])

    def block(self, meta: Meta, items: list[Any]) -> s.Block:
        line, column = (meta.line, meta.column) if not meta.empty else (0, 0)
        return s.Block(line, column, tuple(items))

    def var_decl(self, meta: Meta, items: list[Any]) -> s.VarDecl:
        return s.VarDecl(*_pos(meta), str(items[0]), items[1])

    def expr_stmt(self, meta: Meta, items: list[Any]) -> s.ExprStmt:
        return s.ExprStmt(*_pos(meta), items[0])

    def if_stmt(self, meta: Meta, items: list[Any]) -> s.If:
        return s.If(*_pos(meta), items[0], items[1], items[2] if len(items) > 2 else None)

    def while_stmt(self, meta: Meta, items: list[Any]) -> s.While:
        return s.While(*_pos(meta), items[0], items[1])

    def for_stmt(self, meta: Meta, items: list[Any]) -> s.For:
        return s.For(*_pos(meta), items[0], items[1], items[2], items[3])

    def return_stmt(self, meta: Meta, items: list[Any]) -> s.Return:
        return s.Return(*_pos(meta), items[0])

    def break_stmt(self, meta: Meta, items: list[Any]) -> s.Break:
        return s.Break(*_pos(meta))

    def continue_stmt(self, meta: Meta, items: list[Any]) -> s.Continue:
        return s.Continue(*_pos(meta))

    # Expressions.
    def assign(self, meta: Meta, items: list[Any]) -> s.Assign:
        target, op, value = items
        _check_target(target)
        return s.Assign(*_pos(meta), str(op), target, value)

    def incdec(self, meta: Meta, items: list[Any]) -> s.IncDec:
        target, op = items
        _check_target(target)
        return s.IncDec(*_pos(meta), str(op), target)

    def conditional(self, meta: Meta, items: list[Any]) -> s.Conditional:
        return s.Conditional(*_pos(meta), items[0], items[1], items[2])

    def or_op(self, meta: Meta, items: list[Any]) -> s.Logical:
        return s.Logical(*_pos(meta), "||", items[0], items[1])

    def and_op(self, meta: Meta, items: list[Any]) -> s.Logical:
        return s.Logical(*_pos(meta), "&&", items[0], items[1])

    def binary(self, meta: Meta, items: list[Any]) -> s.Binary:
        left, op, right = items
        return s.Binary(*_pos(meta), str(op), left, right)

    def unary(self, meta: Meta, items: list[Any]) -> s.Unary:
        return s.Unary(*_pos(meta), str(items[0]), items[1])

    def member(self, meta: Meta, items: list[Any]) -> s.Member:
        return s.Member(*_pos(meta), items[0], str(items[1]))

    def index(self, meta: Meta, items: list[Any]) -> s.Index:
        return s.Index(*_pos(meta), items[0], items[1])

    def call(self, meta: Meta, items: list[Any]) -> s.Call:
        callee, *args = items
        return s.Call(*_pos(meta), callee, _arguments(args))

    def new(self, meta: Meta, items: list[Any]) -> s.New:
        name, *args = items
        return s.New(*_pos(meta), str(name), _arguments(args))

    def named_arg(self, meta: Meta, items: list[Any]) -> s.Argument:
        return s.Argument(*_pos(meta), str(items[0]), items[1])

    def array(self, meta: Meta, items: list[Any]) -> s.ArrayLiteral:
        return s.ArrayLiteral(*_pos(meta), tuple(i for i in items if i is not None))

    def number(self, meta: Meta, items: list[Any]) -> s.Literal:
        return s.Literal(*_pos(meta), float(items[0]))

    def string(self, meta: Meta, items: list[Any]) -> s.Literal:
        return s.Literal(*_pos(meta), _unescape(str(items[0]), *_pos(meta)))

    def true(self, meta: Meta, items: list[Any]) -> s.Literal:
        return s.Literal(*_pos(meta), True)

    def false(self, meta: Meta, items: list[Any]) -> s.Literal:
        return s.Literal(*_pos(meta), False)

    def null(self, meta: Meta, items: list[Any]) -> s.Literal:
        return s.Literal(*_pos(meta), None)

    def name(self, meta: Meta, items: list[Any]) -> s.Name:
        return s.Name(*_pos(meta), str(items[0]))


def _arguments(items: list[Any]) -> tuple[s.Argument, ...]:
    args: list[s.Argument] = []
    named = False
    for item in items:
        if item is None:
            continue
        if isinstance(item, s.Argument):
            named = True
            args.append(item)
        elif named:
            raise _error(item.line, item.column, "a positional argument follows a named one")
        else:
            args.append(s.Argument(item.line, item.column, None, item))
    return tuple(args)


def _check_target(target: Any) -> None:
    if not isinstance(target, s.Name | s.Member | s.Index):
        raise _error(target.line, target.column, "cannot assign to this expression")


def _error(line: int, column: int, message: str, expected: str = "") -> ScriptSyntaxError:
    details: dict[str, Any] = {"line": line, "column": column}
    if expected:
        details["expected"] = expected
    return ScriptSyntaxError(f"line {line}, column {column}: {message}", **details)


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def parse(text: str) -> s.Program:
    """Parses a whole script; raises :class:`ScriptSyntaxError` with line and column."""
    try:
        tree = _lark().parse(text)
    except lark.UnexpectedToken as exc:
        expected = _expected(exc.accepts or exc.expected)
        if exc.token.type == "$END":
            line, column = _end_position(text)
            found = "the end of the script"
        else:
            line, column = exc.line, exc.column
            found = repr(str(exc.token))
        raise _error(line, column, f"expected {expected}, found {found}", expected) from None
    except lark.UnexpectedCharacters as exc:
        expected = _expected(exc.allowed or set())
        hint = " (a string without its closing quote?)" if exc.char in "\"'" else ""
        raise _error(
            exc.line, exc.column, f"unexpected character {exc.char!r}{hint}", expected
        ) from None
    except lark.UnexpectedEOF as exc:
        line, column = _end_position(text)
        expected = _expected(set(exc.expected))
        raise _error(line, column, "unexpected end of the script", expected) from None
    if _depth(tree) > MAX_DEPTH:
        raise _error(1, 1, f"the script is nested more than {MAX_DEPTH} levels deep")
    try:
        program: s.Program = _ToAst().transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, ScriptSyntaxError):
            raise exc.orig_exc from None
        raise
    return program


def _depth(tree: lark.Tree[Token]) -> int:
    """Depth of the parse tree, iteratively (a recursive walk could overflow the stack)."""
    deepest = 0
    stack: list[tuple[lark.Tree[Token], int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))
    return deepest
