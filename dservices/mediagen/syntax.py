"""MediaScript's abstract syntax tree: plain frozen dataclasses, each with its source position
(1-based line and column) so that runtime errors can name where they happened."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Node:
    """Every node knows where it starts in the script."""

    line: int
    column: int


# Expressions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal(Node):
    """A number (always a float, as in ECMAScript), string, ``true``/``false`` or ``null``."""

    value: float | str | bool | None


@dataclass(frozen=True, slots=True)
class Name(Node):
    """A variable or function name."""

    id: str


@dataclass(frozen=True, slots=True)
class ArrayLiteral(Node):
    """``[a, b, c]``."""

    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Argument(Node):
    """One call argument: positional (``name`` is None) or ``name @ value``."""

    name: str | None
    value: Expr


@dataclass(frozen=True, slots=True)
class New(Node):
    """``new Media(...)``: the only constructor scripts can call."""

    class_name: str
    args: tuple[Argument, ...]


@dataclass(frozen=True, slots=True)
class Member(Node):
    """``obj.name``."""

    obj: Expr
    name: str


@dataclass(frozen=True, slots=True)
class Index(Node):
    """``obj[index]``."""

    obj: Expr
    index: Expr


@dataclass(frozen=True, slots=True)
class Call(Node):
    """``callee(args)``: a function name, ``media.method`` or ``Math.fn``."""

    callee: Expr
    args: tuple[Argument, ...]


@dataclass(frozen=True, slots=True)
class Unary(Node):
    """``-x``, ``+x``, ``!x``."""

    op: str
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary(Node):
    """Arithmetic and comparisons."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Logical(Node):
    """``&&`` and ``||``, short-circuiting."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Conditional(Node):
    """``test ? then : otherwise``."""

    test: Expr
    then: Expr
    otherwise: Expr


@dataclass(frozen=True, slots=True)
class Assign(Node):
    """``target = value`` (and ``+=`` etc.); the target is a Name, Member or Index."""

    op: str
    target: Expr
    value: Expr


@dataclass(frozen=True, slots=True)
class IncDec(Node):
    """``target++`` / ``target--``: evaluates to the old value."""

    op: str
    target: Expr


Expr = (
    Literal
    | Name
    | ArrayLiteral
    | New
    | Member
    | Index
    | Call
    | Unary
    | Binary
    | Logical
    | Conditional
    | Assign
    | IncDec
)

# Statements ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VarDecl(Node):
    """``var name = init;`` (``let`` and ``const`` mean the same)."""

    name: str
    init: Expr | None


@dataclass(frozen=True, slots=True)
class ExprStmt(Node):
    """An expression evaluated for its effect."""

    expr: Expr


@dataclass(frozen=True, slots=True)
class Block(Node):
    """``{ ... }``."""

    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class If(Node):
    """``if (test) then else otherwise``."""

    test: Expr
    then: Stmt
    otherwise: Stmt | None


@dataclass(frozen=True, slots=True)
class While(Node):
    """``while (test) body``."""

    test: Expr
    body: Stmt


@dataclass(frozen=True, slots=True)
class For(Node):
    """``for (init; test; update) body``."""

    init: Stmt | None
    test: Expr | None
    update: Expr | None
    body: Stmt


@dataclass(frozen=True, slots=True)
class Return(Node):
    """``return value;``."""

    value: Expr | None


@dataclass(frozen=True, slots=True)
class Break(Node):
    """``break;``."""


@dataclass(frozen=True, slots=True)
class Continue(Node):
    """``continue;``."""


Stmt = VarDecl | ExprStmt | Block | If | While | For | Return | Break | Continue

# Top level -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param(Node):
    """A declared parameter, with its default expression when it has one."""

    name: str
    default: Expr | None


@dataclass(frozen=True, slots=True)
class Function(Node):
    """``function name(params) { body }``."""

    name: str
    params: tuple[Param, ...]
    body: Block


@dataclass(frozen=True, slots=True)
class Program:
    """A parsed script: its top-level statements and its functions by name."""

    body: tuple[Stmt, ...]
    functions: dict[str, Function] = field(default_factory=dict)

    @property
    def main(self) -> Function | None:
        """``function main(...)``, whose parameters the MRL binds, when the script has one."""
        return self.functions.get("main")
