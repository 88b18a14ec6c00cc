"""Just enough of Go's text/template to render the TEMPLATE an Ollama Modelfile gets from
`export/ollama.py` (range, if/else if, :=, eq/ne/and/len/slice, fields, strings, trim markers), so a
template is checked without Go. The tests also render the same templates with Go itself.
"""

from __future__ import annotations

import re
from typing import Any

from tunesmith.errors import TunesmithError


def render_go_template(source: str, messages: list[dict], *, system: str = "") -> str:
    """Render a Go text/template as Ollama would for these messages: enough of Go's semantics for
    the templates `go_template` writes (range, if/else if, :=, eq/ne/and/len/slice, fields,
    strings, trim markers). Used to check a TEMPLATE without Go."""
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages], "System": system}
    out: list[str] = []
    nodes, stop = _go_parse(_go_lex(source), [0])
    if stop is not None:
        raise TunesmithError(f"Go template: unexpected {{{{ {stop[0]} }}}}")
    _go_run(nodes, data, [{"$": data}], out)
    return "".join(out)


_GO_TOKEN = re.compile(
    r"""\s*(?:("(?:\\.|[^"\\])*")|(`[^`]*`)|(\()|(\))|(:=|=)|(,)|(-?\d+)"""
    r"""|(\$[\w]*(?:\.\w+)*)|((?:\.\w+)+|\.)|([A-Za-z_]\w*))"""
)
_GO_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[abfnrtv\\'\"])")
_GO_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _go_lex(source: str) -> list[tuple[str, str]]:
    """("text", literal) and ("action", body) items, with `{{-` / `-}}` whitespace trimming applied."""
    items, pos = [], 0
    while (start := source.find("{{", pos)) != -1:
        text, begin = source[pos:start], start + 2
        if source[begin : begin + 2] in ("- ", "-\n", "-\t", "-\r"):
            text, begin = text.rstrip(" \t\r\n"), begin + 1
        end = _go_action_end(source, begin)
        body, pos = source[begin:end], end + 2
        if body[-2:] in (" -", "\n-", "\t-", "\r-"):
            body = body[:-1]
            while pos < len(source) and source[pos] in " \t\r\n":
                pos += 1
        items.append(("text", text))
        if not body.strip().startswith("/*"):  # a comment writes nothing
            items.append(("action", body.strip()))
    items.append(("text", source[pos:]))
    return items


def _go_action_end(source: str, pos: int) -> int:
    """Index of the `}}` closing the action that starts at `pos` (quoted strings may hold braces)."""
    while pos < len(source):
        if source[pos] == '"':
            pos += 1
            while pos < len(source) and source[pos] != '"':
                pos += 2 if source[pos] == "\\" else 1
        elif source[pos] == "`":
            pos = source.index("`", pos + 1)
        elif source.startswith("}}", pos):
            return pos
        pos += 1
    raise TunesmithError("Go template: unclosed action")


def _go_parse(items: list[tuple[str, str]], at: list[int]) -> tuple[list, tuple[str, str] | None]:
    """Nodes up to the next `end`/`else` (returned as the stop) or the end of the items."""
    nodes: list = []
    while at[0] < len(items):
        kind, body = items[at[0]]
        at[0] += 1
        if kind == "text":
            nodes.append(("text", body))
        elif body == "end" or body == "else" or body.startswith("else if "):
            return nodes, (body, body[len("else if ") :] if body.startswith("else if ") else "")
        elif body.startswith("if "):
            branches: list[tuple[str, list]] = []
            otherwise: list = []
            condition = body[3:]
            while True:
                inner, stop = _go_parse(items, at)
                branches.append((condition, inner))
                if stop is None:
                    raise TunesmithError("Go template: {{ if }} without {{ end }}")
                if stop[0] == "end":
                    break
                if stop[0] == "else":
                    otherwise, stop = _go_parse(items, at)
                    if stop is None or stop[0] != "end":
                        raise TunesmithError("Go template: {{ else }} without {{ end }}")
                    break
                condition = stop[1]
            nodes.append(("if", branches, otherwise))
        elif body.startswith("range "):
            match = re.fullmatch(r"range\s+(?:(\$\w+)\s*,\s*(\$\w+)\s*:=\s*)?(.+)", body, re.S)
            inner, stop = _go_parse(items, at)
            if match is None or stop is None or stop[0] != "end":
                raise TunesmithError(f"Go template: unsupported {{{{ {body} }}}}")
            nodes.append(("range", match.group(1), match.group(2), match.group(3), inner))
        elif match := re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", body, re.S):
            nodes.append(("set", match.group(1), match.group(2) == ":=", match.group(3)))
        else:
            nodes.append(("print", body))
    return nodes, None


def _go_run(nodes: list, dot: Any, scopes: list[dict], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            out.append(_go_text(_go_eval(node[1], dot, scopes)))
        elif node[0] == "set":
            _, name, declare, expression = node
            frame = scopes[-1] if declare else next((f for f in reversed(scopes) if name in f), None)
            if frame is None:
                raise TunesmithError(f"Go template: assignment to undeclared {name}")
            frame[name] = _go_eval(expression, dot, scopes)
        elif node[0] == "if":
            for condition, body in node[1]:
                if _go_truth(_go_eval(condition, dot, scopes)):
                    _go_run(body, dot, [*scopes, {}], out)
                    break
            else:
                _go_run(node[2], dot, [*scopes, {}], out)
        else:  # range
            _, key, value, expression, body = node
            for index, element in enumerate(_go_eval(expression, dot, scopes)):
                frame = {key: index, value: element} if key else {}
                _go_run(body, element, [*scopes, frame], out)


def _go_eval(expression: str, dot: Any, scopes: list[dict]) -> Any:
    tokens, pos = [], 0
    while pos < len(expression.rstrip()):
        match = _GO_TOKEN.match(expression, pos)
        if match is None:
            raise TunesmithError(f"Go template: cannot read {expression[pos:]!r}")
        kind = match.lastindex
        assert kind is not None  # every alternative of _GO_TOKEN is a group: the one that matched is set
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    value, rest = _go_command(tokens, dot, scopes)
    if rest:
        raise TunesmithError(f"Go template: unsupported expression {expression!r}")
    return value


def _go_command(tokens: list, dot: Any, scopes: list[dict]) -> tuple[Any, list]:
    """Evaluate `fn arg...` or a single operand; return it and the tokens from the closing parenthesis on."""
    operands, rest = [], tokens
    while rest and rest[0][0] != 4:
        kind, text = rest[0]
        if kind == 3:
            value, rest = _go_command(rest[1:], dot, scopes)
            if not rest:
                raise TunesmithError("Go template: unclosed parenthesis")
            operands.append(value)  # `rest` starts at the closing parenthesis, skipped below
        elif kind in (1, 2):
            operands.append(_go_unquote(text) if kind == 1 else text[1:-1])
        elif kind == 7:
            operands.append(int(text))
        elif kind == 8:
            name, *fields = text.split(".")
            frame = next((f for f in reversed(scopes) if name in f), None)
            if frame is None:
                raise TunesmithError(f"Go template: undefined variable {name}")
            operands.append(_go_fields(frame[name], fields))
        elif kind == 9:
            operands.append(_go_fields(dot, [f for f in text.split(".") if f]))
        elif kind == 10:
            operands.append(("function", text))
        else:
            raise TunesmithError(f"Go template: unsupported {text!r}")
        rest = rest[1:]
    if operands and isinstance(operands[0], tuple) and operands[0][0] == "function":
        return _go_call(operands[0][1], operands[1:]), rest
    if len(operands) != 1:
        raise TunesmithError("Go template: expected one value")
    return operands[0], rest


def _go_call(name: str, args: list) -> Any:
    if name == "eq":
        return any(args[0] == other for other in args[1:])
    if name == "ne":
        return args[0] != args[1]
    if name in ("and", "or"):
        for arg in args:  # Go returns the first argument that decides, else the last
            if _go_truth(arg) != (name == "and"):
                return arg
        return args[-1]
    if name == "not":
        return not _go_truth(args[0])
    if name == "len":
        return len(args[0])
    if name == "slice":
        return args[0][args[1] if len(args) > 1 else None : args[2] if len(args) > 2 else None]
    if name in ("true", "false"):
        return name == "true"
    raise TunesmithError(f"Go template: unsupported function {name}")


def _go_fields(value: Any, fields: list[str]) -> Any:
    for field in fields:
        if not isinstance(value, dict) or field not in value:
            raise TunesmithError(f"Go template: no field {field}")
        value = value[field]
    return value


def _go_truth(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict)) and not value)


def _go_text(value: Any) -> str:
    if value is None:
        return "<no value>"
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _go_unquote(literal: str) -> str:
    def one(match: re.Match) -> str:
        code = match.group(0)[1:]
        if code[0] in "xuU":
            return chr(int(code[1:], 16))
        return _GO_SIMPLE.get(code, code)

    return _GO_ESCAPE.sub(one, literal[1:-1])
