"""MediaScript's parser and interpreter, in process (no images, no network)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dservices.mediagen.errors import (
    LimitExceededError,
    MediaGenError,
    RequestError,
    ScriptRuntimeError,
    ScriptSyntaxError,
)
from dservices.mediagen.interpreter import Interpreter, RunLimits
from dservices.mediagen.media import MediaContext, MediaLimits
from dservices.mediagen.parser import parse
from dservices.mediagen.values import number_text

LIMITS = MediaLimits(max_image_pixels=10_000, max_total_pixels=100_000, max_output_bytes=10_000)


def run(
    source: str,
    args: tuple[Any, ...] = (),
    named: dict[str, str] | None = None,
    limits: RunLimits | None = None,
) -> dict[str, Any]:
    """Runs ``source``; returns its global variables."""
    context = MediaContext(LIMITS, _no_fetch, lambda: None)
    interpreter = Interpreter(parse(source), context, limits or RunLimits())
    interpreter.run(args, named or {})
    return interpreter.globals


def _no_fetch(name: str) -> bytes:
    raise AssertionError(f"unexpected fetch of {name}")


def value_of(expression: str) -> Any:
    return run(f"var result = {expression};")["result"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("7 % 3", 1.0),
        ("-7 % 3", -1.0),
        ("10 / 4", 2.5),
        ("-(2 - 5)", 3.0),
        ('"a" + 1 + 2', "a12"),
        ('1 + 2 + "a"', "3a"),
        ('"w=" + 0.5', "w=0.5"),
        ("1 < 2 && 2 <= 2", True),
        ('"abc" < "abd"', True),
        ("1 == 1 && 1 === 1 && 1 != 2 && 1 !== 2", True),
        ('1 == "1"', False),
        ("0 || 5", 5.0),
        ('"" && 5', ""),
        ("!0", True),
        ("true ? 1 : 2", 1.0),
        ("null", None),
        ("[1, 2, 3].length", 3.0),
        ('"hello".length', 5.0),
        ("[4, 5, 6][1]", 5.0),
        ("Math.floor(2.7) + Math.ceil(2.1) + Math.round(2.5)", 8.0),
        ("Math.max(1, 9, 3) - Math.min(4, 2) + Math.abs(-1)", 8.0),
        ("Math.pow(2, 10) + Math.sqrt(16)", 1028.0),
        ('Number("12.5") + 1', 13.5),
        ("String(3) + String(true) + String(null)", "3truenull"),
        ("String([1, [2, 3]])", "1,2,3"),
        ("'single \\'quoted\\'\\n'", "single 'quoted'\n"),
        ('"\\u00e9"', "é"),
    ],
)
def test_expressions(expression: str, expected: Any) -> None:
    assert value_of(expression) == expected


def test_statements_loops_and_functions() -> None:
    g = run(
        """
        // comments are ignored
        var total = 0;
        for (var i = 0; i < 10; i++) {
            if (i == 3) { continue; }
            if (i == 8) break;
            total += i;
        }
        var n = 0;
        while (n < 5) n = n + 2;
        var list = [];
        list.push(1, 2);
        list[0] = 7;
        function square(x, y = x * x) { return y; }
        var sq = square(3);
        var named = square(x @ 1, y @ 5);
        function fact(k) { if (k <= 1) return 1; return k * fact(k - 1); }
        var f = fact(10);
        /* block
           comment */
        let a = 1; const b = 2;
        """
    )
    assert g["total"] == 0 + 1 + 2 + 4 + 5 + 6 + 7
    assert g["n"] == 6.0
    assert g["list"] == [7.0, 2.0]
    assert (g["sq"], g["named"], g["f"]) == (9.0, 5.0, 3628800.0)
    assert (g["a"], g["b"]) == (1.0, 2.0)


def test_main_binds_positional_named_and_defaults() -> None:
    script = """
        var seen = null;
        function main(source, width = 128, flag = false, label = "x") {
            seen = [source, width, flag, label];
        }
    """
    assert run(script, ("s.jpg", 64.0))["seen"] == ["s.jpg", 64.0, False, "x"]
    named = {"source": "s.jpg", "width": "64", "flag": "true", "label": "12"}
    assert run(script, (), named)["seen"] == ["s.jpg", 64.0, True, "12"]
    with pytest.raises(RequestError, match="missing parameter 'source'"):
        run(script)
    with pytest.raises(RequestError, match="unknown parameter 'height'"):
        run(script, (), {"source": "a", "height": "3"})
    with pytest.raises(RequestError, match="must be a number"):
        run(script, (), {"source": "a", "width": "wide"})
    with pytest.raises(RequestError, match="given twice"):
        run(script, ("a",), {"source": "b"})
    with pytest.raises(RequestError, match="takes 4 parameter"):
        run(script, ("a", 1.0, True, "l", "extra"))
    with pytest.raises(RequestError, match="no main"):
        run("var x = 1;", ("a",))


@pytest.mark.parametrize(
    ("source", "line", "column", "expected"),
    [
        ("var a = ;", 1, 9, "a name"),
        ("var image = new Media();\nimage.rotate(angle 33);", 2, 20, "')'"),
        ("var a = 1\nvar b = 2;", 2, 1, "';'"),
        ("if (x) {", 1, 9, "'}'"),
        ('var s = "open;', 1, 9, ""),
        ("f(a @ 1, 2);", 1, 10, ""),
        ("1 = 2;", 1, 1, ""),
        ("function f() {}\nfunction f() {}", 2, 1, ""),
    ],
)
def test_syntax_errors_name_line_and_column(
    source: str, line: int, column: int, expected: str
) -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        parse(source)
    assert caught.value.details["line"] == line
    assert caught.value.details["column"] == column
    assert caught.value.message.startswith(f"line {line}, column {column}: ")
    assert expected in caught.value.details.get("expected", "")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("var a = b;", "'b' is not defined"),
        ("c = 1;", "not declared"),
        ('var a = 1 - "x";', "needs numbers"),
        ("var a = 1 / 0;", "division by zero"),
        ("var a = [1][5];", "out of range"),
        ("var a = nothing();", "not a function"),
        ("var a = new Image();", "only Media exists"),
        ("var m = new Media(); m.explode();", "no method 'explode'"),
        ("var m = new Media(); m.rotate(angel @ 3);", "no parameter 'angel'"),
        ("var m = new Media(); m.rotate(angle @ 3);", "the media is empty"),
        ("var a = (1).x;", "no property 'x'"),
        ("break;", "outside a loop"),
    ],
)
def test_runtime_errors_are_script_errors_with_position(source: str, message: str) -> None:
    with pytest.raises(ScriptRuntimeError) as caught:
        run(source)
    assert message in caught.value.message
    assert caught.value.message.startswith("line 1, column ")
    assert caught.value.details["line"] == 1


def test_python_internals_are_unreachable() -> None:
    for source in (
        "var a = [].__class__;",
        'var a = "x".__len__();',
        "var a = Math.__dict__;",
        "var m = new Media(); var a = m.image;",
        "var m = new Media(); var a = m.__init__();",
        "var a = eval(1);",
        "var a = __import__;",
    ):
        with pytest.raises(MediaGenError):
            run(source)


def test_step_limit_stops_an_endless_loop() -> None:
    with pytest.raises(LimitExceededError) as caught:
        run("while (true) {}", limits=RunLimits(max_steps=5_000))
    assert caught.value.http_status == 422
    assert caught.value.details["limit"] == "max_steps"


def test_wall_time_limit_uses_the_clock() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.01  # every check advances a fake clock; no real time passes
        return now[0]

    limits = RunLimits(max_steps=10**9, wall_time_s=1.0, clock=clock)
    with pytest.raises(LimitExceededError) as caught:
        run("var i = 0; while (true) { i++; }", limits=limits)
    assert caught.value.details["limit"] == "wall_time_ms"


@pytest.mark.parametrize(
    ("source", "limit"),
    [
        ('var s = "ab"; while (true) { s = s + s; }', "max_string_chars"),
        ("var a = []; while (true) { a.push(1, 2, 3); }", "max_array_items"),
        ("function f(n) { return f(n + 1); } f(0);", "max_call_depth"),
        ("var m = new Media(width @ 1000, height @ 1000);", "max_image_pixels"),
    ],
)
def test_resource_limits(source: str, limit: str) -> None:
    limits = RunLimits(max_string_chars=10_000, max_array_items=1_000)
    with pytest.raises(LimitExceededError) as caught:
        run(source, limits=limits)
    assert caught.value.details["limit"] == limit


def test_deep_nesting_is_a_syntax_error_not_a_crash() -> None:
    with pytest.raises(ScriptSyntaxError, match="nested"):
        parse("var a = " + "!" * 5000 + "1;")
    with pytest.raises(ScriptSyntaxError, match="nested"):
        parse("if (1) " * 5000 + "x;")
    assert value_of("(" * 500 + "1" + ")" * 500) == 1.0  # parentheses add no depth


@given(st.text(alphabet=st.sampled_from(list('var x=1;(){}[]+-*/"@ifelsnw.\n')), max_size=60))
def test_parse_only_ever_raises_syntax_errors(source: str) -> None:
    error: ScriptSyntaxError | None = None
    try:
        parse(source)
    except ScriptSyntaxError as exc:
        error = exc
    if error is not None:
        assert error.details["line"] >= 1
        assert error.details["column"] >= 1


_numbers = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda x: round(x, 3))


@given(_numbers, _numbers, _numbers)
def test_arithmetic_matches_python_floats(a: float, b: float, c: float) -> None:
    expression = f"{number_text(a)} + {number_text(b)} * {number_text(c)}"
    # Literals are written without a sign: a leading "-" is unary minus, as in ECMAScript.
    assert value_of(f"({expression}) - 0") == pytest.approx(a + b * c)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_text_round_trips(value: float) -> None:
    text = number_text(value)
    assert float(text) == value
    assert math.isfinite(float(text))
