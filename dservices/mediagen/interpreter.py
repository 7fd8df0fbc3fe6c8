"""Walks a parsed MediaScript :class:`~dservices.mediagen.syntax.Program`.

Safe by construction: a script sees only the values of :mod:`dservices.mediagen.values`;
member access and calls go through explicit tables (the Media methods of
:mod:`dservices.mediagen.ops`, ``Math``, ``Number``, ``String``, ``push``, ``length``), never
``getattr`` or ``eval``. Every statement and expression costs one step; the step limit, the
wall-time deadline, the string and array sizes and the call depth are all checked as it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dservices.mediagen import ops
from dservices.mediagen import syntax as s
from dservices.mediagen._builtins import MATH, bind, compare, convert_parameter
from dservices.mediagen.errors import (
    LimitExceededError,
    MediaGenError,
    RequestError,
    ScriptRuntimeError,
)
from dservices.mediagen.media import Media, MediaContext
from dservices.mediagen.values import Value, equal, to_number, to_text, truthy, type_name


@dataclass(frozen=True)
class RunLimits:
    """Limits of one run (defaults and documentation in ``MediaGenConfig``)."""

    max_steps: int = 1_000_000
    wall_time_s: float = 30.0
    max_string_chars: int = 1_000_000
    max_array_items: int = 100_000
    max_call_depth: int = 64
    clock: Callable[[], float] = field(default=time.monotonic)


class _Return(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, value: Value) -> None:
        self.value = value


class _Break(Exception):  # noqa: N818
    def __init__(self, node: s.Node) -> None:
        self.node = node


class _Continue(_Break):
    pass


class Interpreter:
    """Runs one program once; build a new one per request."""

    def __init__(
        self,
        program: s.Program,
        context: MediaContext,
        limits: RunLimits,
        deadline: float | None = None,
    ) -> None:
        self.program = program
        self.context = context
        self.limits = limits
        self.steps = 0
        self._deadline = limits.clock() + limits.wall_time_s if deadline is None else deadline
        self.globals: dict[str, Value] = {}
        self._frames: list[dict[str, Value]] = []
        self._eval_table: dict[type[Any], Callable[[Any], Value]] = {
            s.Literal: self._literal,
            s.Name: self._name,
            s.ArrayLiteral: self._array,
            s.New: self._new,
            s.Member: self._member,
            s.Index: self._index,
            s.Call: self._call,
            s.Unary: self._unary,
            s.Binary: self._binary,
            s.Logical: self._logical,
            s.Conditional: self._conditional,
            s.Assign: self._assign,
            s.IncDec: self._incdec,
        }
        self._exec_table: dict[type[Any], Callable[[Any], None]] = {
            s.VarDecl: self._var,
            s.ExprStmt: lambda n: self.eval(n.expr),
            s.Block: self._block,
            s.If: self._if,
            s.While: self._while,
            s.For: self._for,
            s.Return: self._return,
            s.Break: self._break,
            s.Continue: self._continue,
        }
        context.check_deadline = self.check_deadline

    # Entry points --------------------------------------------------------------------------

    def run(self, positional: Sequence[Value], named: Mapping[str, str]) -> None:
        """Binds the MRL's parameters to ``main`` (when the script has one), runs the
        top-level statements, then ``main``."""
        try:
            main = self.program.main
            if main is None:
                if positional or named:
                    raise RequestError("the script has no main() and takes no parameters")
                self._exec_all(self.program.body)
                return
            values = self._bind_main(main, positional, named)
            self._exec_all(self.program.body)
            self._invoke(main, values)
        except RecursionError:
            raise LimitExceededError(
                "the script nests too deeply",
                limit="max_call_depth",
                value=self.limits.max_call_depth,
                status=422,
            ) from None
        except _Break as stray:
            error = ScriptRuntimeError("break or continue outside a loop")
            raise _positioned(error, stray.node) from None
        except _Return:
            return

    def _bind_main(
        self, main: s.Function, positional: Sequence[Value], named: Mapping[str, str]
    ) -> dict[str, Value]:
        values: dict[str, Value] = {}
        if len(positional) > len(main.params):
            raise RequestError(
                f"main() takes {len(main.params)} parameter(s), args gave {len(positional)}"
            )
        unknown = sorted(set(named) - {p.name for p in main.params})
        if unknown:
            declared = ", ".join(p.name for p in main.params) or "none"
            raise RequestError(f"unknown parameter {unknown[0]!r} (main declares: {declared})")
        for index, param in enumerate(main.params):
            default = None if param.default is None else self.eval(param.default)
            if index < len(positional):
                if param.name in named:
                    raise RequestError(f"parameter {param.name!r} is given twice")
                values[param.name] = positional[index]
            elif param.name in named:
                values[param.name] = convert_parameter(param.name, named[param.name], default)
            elif param.default is not None:
                values[param.name] = default
            else:
                raise RequestError(f"missing parameter {param.name!r}")
        return values

    def check_deadline(self) -> None:
        """Raises when the run's wall time is used up (also called by media operations)."""
        if self.limits.clock() > self._deadline:
            raise LimitExceededError(
                f"the script ran longer than {self.limits.wall_time_s:g} s",
                limit="wall_time_ms",
                value=round(self.limits.wall_time_s * 1000),
                status=422,
            )

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise LimitExceededError(
                f"the script ran more than {self.limits.max_steps} steps",
                limit="max_steps",
                value=self.limits.max_steps,
                status=422,
            )
        if not self.steps & 1023:
            self.check_deadline()

    # Statements ----------------------------------------------------------------------------

    def _exec_all(self, body: Sequence[s.Stmt]) -> None:
        for stmt in body:
            self.exec(stmt)

    def exec(self, node: s.Stmt) -> None:
        """Executes one statement."""
        self._tick()
        try:
            self._exec_table[type(node)](node)
        except MediaGenError as exc:
            raise _positioned(exc, node) from None

    def _scope(self) -> dict[str, Value]:
        return self._frames[-1] if self._frames else self.globals

    def _var(self, node: s.VarDecl) -> None:
        self._scope()[node.name] = None if node.init is None else self.eval(node.init)

    def _block(self, node: s.Block) -> None:
        self._exec_all(node.body)

    def _if(self, node: s.If) -> None:
        if truthy(self.eval(node.test)):
            self.exec(node.then)
        elif node.otherwise is not None:
            self.exec(node.otherwise)

    def _while(self, node: s.While) -> None:
        while truthy(self.eval(node.test)):
            try:
                self.exec(node.body)
            except _Continue:
                continue
            except _Break:
                break

    def _for(self, node: s.For) -> None:
        if node.init is not None:
            self.exec(node.init)
        while node.test is None or truthy(self.eval(node.test)):
            try:
                self.exec(node.body)
            except _Continue:
                pass
            except _Break:
                break
            if node.update is not None:
                self.eval(node.update)

    def _return(self, node: s.Return) -> None:
        raise _Return(None if node.value is None else self.eval(node.value))

    def _break(self, node: s.Break) -> None:
        raise _Break(node)

    def _continue(self, node: s.Continue) -> None:
        raise _Continue(node)

    # Expressions ---------------------------------------------------------------------------

    def eval(self, node: s.Expr) -> Value:
        """Evaluates one expression."""
        self._tick()
        try:
            return self._eval_table[type(node)](node)
        except MediaGenError as exc:
            raise _positioned(exc, node) from None

    def _literal(self, node: s.Literal) -> Value:
        return node.value

    def _name(self, node: s.Name) -> Value:
        scope = self._scope()
        if node.id in scope:
            return scope[node.id]
        if node.id in self.globals:
            return self.globals[node.id]
        raise ScriptRuntimeError(f"{node.id!r} is not defined")

    def _array(self, node: s.ArrayLiteral) -> Value:
        items = [self.eval(item) for item in node.items]
        self._check_array(items)
        return items

    def _check_array(self, items: list[Value]) -> None:
        if len(items) > self.limits.max_array_items:
            raise LimitExceededError(
                f"an array longer than {self.limits.max_array_items} items",
                limit="max_array_items",
                value=self.limits.max_array_items,
                status=422,
            )

    def _arguments(self, args: Sequence[s.Argument]) -> list[tuple[str | None, Value]]:
        return [(arg.name, self.eval(arg.value)) for arg in args]

    def _new(self, node: s.New) -> Value:
        if node.class_name != "Media":
            raise ScriptRuntimeError(f"unknown class {node.class_name!r}: only Media exists")
        bound = bind("new Media()", ops.CREATE_PARAMS, self._arguments(node.args))
        return ops.create(self.context, bound)

    def _member(self, node: s.Member) -> Value:
        obj = self.eval(node.obj)
        if node.name == "length" and isinstance(obj, list | str):
            return float(len(obj))
        if isinstance(obj, Media) and node.name in ops.PROPERTIES:
            return ops.PROPERTIES[node.name](obj.require(node.name))
        raise ScriptRuntimeError(f"a {type_name(obj)} has no property {node.name!r}")

    def _index(self, node: s.Index) -> Value:
        obj = self.eval(node.obj)
        index = self.eval(node.index)
        if not isinstance(obj, list | str):
            raise ScriptRuntimeError(f"cannot index a {type_name(obj)}")
        return obj[self._position(obj, index)]

    @staticmethod
    def _position(obj: list[Value] | str, index: Value) -> int:
        if not isinstance(index, float) or not index.is_integer():
            raise ScriptRuntimeError("an index must be a whole number")
        if not 0 <= index < len(obj):
            raise ScriptRuntimeError(f"index {int(index)} is out of range (length {len(obj)})")
        return int(index)

    def _call(self, node: s.Call) -> Value:
        callee = node.callee
        if isinstance(callee, s.Name):
            return self._call_function(callee.id, node.args)
        if isinstance(callee, s.Member):
            if isinstance(callee.obj, s.Name) and callee.obj.id == "Math":
                if callee.name not in MATH:
                    raise ScriptRuntimeError(f"Math has no function {callee.name!r}")
                return MATH[callee.name]([v for _, v in self._arguments(node.args)])
            obj = self.eval(callee.obj)
            if isinstance(obj, Media):
                op = ops.OPS.get(callee.name)
                if op is None:
                    raise ScriptRuntimeError(f"Media has no method {callee.name!r}")
                self.check_deadline()
                bound = bind(f"{callee.name}()", op.params, self._arguments(node.args))
                result = op.run(self.context, obj, bound)
                self.check_deadline()
                return result
            if isinstance(obj, list) and callee.name == "push":
                obj.extend(v for _, v in self._arguments(node.args))
                self._check_array(obj)
                return float(len(obj))
            raise ScriptRuntimeError(f"a {type_name(obj)} has no method {callee.name!r}")
        raise ScriptRuntimeError("only named functions and methods can be called")

    def _call_function(self, name: str, args: Sequence[s.Argument]) -> Value:
        if name in ("Number", "String"):
            values = self._arguments(args)
            if len(values) != 1:
                raise ScriptRuntimeError(f"{name}() takes one argument")
            value = values[0][1]
            if name == "Number":
                return to_number(value)
            return to_text(value, self.limits.max_string_chars)
        function = self.program.functions.get(name)
        if function is None:
            raise ScriptRuntimeError(f"{name!r} is not a function")
        if len(self._frames) >= self.limits.max_call_depth:
            raise LimitExceededError(
                f"calls nested more than {self.limits.max_call_depth} deep",
                limit="max_call_depth",
                value=self.limits.max_call_depth,
                status=422,
            )
        values = self._arguments(args)
        params = [
            (p.name, ops.REQUIRED if p.default is None else p.default) for p in function.params
        ]
        bound = bind(f"{name}()", params, values)
        frame: dict[str, Value] = {}
        self._frames.append(frame)
        try:
            for param in function.params:
                value = bound[param.name]
                if param.default is not None and value is param.default:
                    value = self.eval(param.default)  # defaults see the earlier parameters
                frame[param.name] = value
        finally:
            self._frames.pop()
        return self._invoke(function, frame)

    def _invoke(self, function: s.Function, frame: dict[str, Value]) -> Value:
        self._frames.append(frame)
        try:
            self._exec_all(function.body.body)
        except _Return as result:
            return result.value
        except _Break as stray:
            error = ScriptRuntimeError("break or continue outside a loop")
            raise _positioned(error, stray.node) from None
        finally:
            self._frames.pop()
        return None

    def _unary(self, node: s.Unary) -> Value:
        value = self.eval(node.operand)
        if node.op == "!":
            return not truthy(value)
        if not isinstance(value, float):
            raise ScriptRuntimeError(f"unary {node.op} needs a number, not a {type_name(value)}")
        return -value if node.op == "-" else value

    def _binary(self, node: s.Binary) -> Value:
        return self._apply(node.op, self.eval(node.left), self.eval(node.right))

    def _apply(self, op: str, left: Value, right: Value) -> Value:
        if op in ("==", "==="):
            return equal(left, right)
        if op in ("!=", "!=="):
            return not equal(left, right)
        if op == "+" and (isinstance(left, str) or isinstance(right, str)):
            limit = self.limits.max_string_chars
            text = to_text(left, limit) + to_text(right, limit)
            return to_text(text, limit)
        if op in ("<", "<=", ">", ">=") and isinstance(left, str) and isinstance(right, str):
            return compare(op, left, right)
        if not isinstance(left, float) or not isinstance(right, float):
            raise ScriptRuntimeError(
                f"{op} needs numbers, not a {type_name(left)} and a {type_name(right)}"
            )
        if op in ("<", "<=", ">", ">="):
            return compare(op, left, right)
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if right == 0.0:
            raise ScriptRuntimeError("division by zero")
        return left / right if op == "/" else math.fmod(left, right)

    def _logical(self, node: s.Logical) -> Value:
        left = self.eval(node.left)
        if (node.op == "&&") != truthy(left):
            return left
        return self.eval(node.right)

    def _conditional(self, node: s.Conditional) -> Value:
        return self.eval(node.then if truthy(self.eval(node.test)) else node.otherwise)

    def _assign(self, node: s.Assign) -> Value:
        value = self.eval(node.value)
        if node.op != "=":
            value = self._apply(node.op[0], self.eval(node.target), value)
        self._store(node.target, value)
        return value

    def _incdec(self, node: s.IncDec) -> Value:
        old = self.eval(node.target)
        if not isinstance(old, float):
            raise ScriptRuntimeError(f"{node.op} needs a number, not a {type_name(old)}")
        self._store(node.target, old + 1.0 if node.op == "++" else old - 1.0)
        return old

    def _store(self, target: s.Expr, value: Value) -> None:
        if isinstance(target, s.Name):
            scope = self._scope()
            if target.id in scope:
                scope[target.id] = value
            elif target.id in self.globals:
                self.globals[target.id] = value
            else:
                raise ScriptRuntimeError(f"{target.id!r} is not declared; use var {target.id}")
        elif isinstance(target, s.Index):
            obj = self.eval(target.obj)
            if not isinstance(obj, list):
                raise ScriptRuntimeError(f"cannot assign into a {type_name(obj)}")
            obj[self._position(obj, self.eval(target.index))] = value
        else:
            raise ScriptRuntimeError("properties are read-only")


def _positioned(exc: MediaGenError, node: s.Node) -> MediaGenError:
    """Adds the innermost node's line and column to an error that has none yet."""
    if "line" in exc.details:
        return exc
    exc.details["line"], exc.details["column"] = node.line, node.column
    if isinstance(exc, ScriptRuntimeError):
        exc.message = f"line {node.line}, column {node.column}: {exc.message}"
        exc.args = (exc.message,)
    return exc
