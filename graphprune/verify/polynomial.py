"""Counts that depend on symbolic sizes: a polynomial in named dims (batch, seq…) with integer coefficients,
so that MACs of a transformer can be shown as a formula and evaluated at the sizes a user runs."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass, field

Monomial = tuple[str, ...]  # sorted names, repeated for powers: ("seq", "seq") is seq²


@dataclass
class Poly:
    terms: dict[Monomial, int] = field(default_factory=dict)

    @classmethod
    def of(cls, size: int | str | None) -> Poly:
        """One size: a number, a named symbolic size, or unknown (counted as 1)."""
        if isinstance(size, int):
            return cls({(): size} if size else {})
        return cls({(size,): 1}) if size else cls({(): 1})

    def __add__(self, other: Poly) -> Poly:
        terms = Counter(self.terms)
        terms.update(other.terms)
        return Poly({m: c for m, c in terms.items() if c})

    def __mul__(self, other: Poly | int) -> Poly:
        if isinstance(other, int):
            return Poly({m: c * other for m, c in self.terms.items() if c * other})
        terms: Counter = Counter()
        for m1, c1 in self.terms.items():
            for m2, c2 in other.terms.items():
                terms[tuple(sorted(m1 + m2))] += c1 * c2
        return Poly({m: c for m, c in terms.items() if c})

    def __bool__(self) -> bool:
        return bool(self.terms)

    def evaluate(self, dims: dict[str, int] | None = None) -> int:
        """The count with every symbolic size from `dims` (absent ones: 1); sizes shape inference computed
        (`floor(h/2 - 1/2) + 1`) are evaluated at them."""
        total = 0
        for monomial, coefficient in self.terms.items():
            value = coefficient
            for name in monomial:
                value *= size_of(name, dims or {})
            total += value
        return total

    def symbols(self) -> set[str]:
        return {name for monomial in self.terms for name in monomial}

    def free_sizes(self) -> set[str]:
        """The named sizes the count depends on: the symbols, and the names inside computed sizes."""
        return {free for name in self.symbols() for free in names_in(name)}

    def __str__(self) -> str:
        """Highest degree first: '4.7M·batch·seq + 24.6k·batch·seq²'."""
        if not self.terms:
            return "0"
        parts = []
        for monomial, coefficient in sorted(self.terms.items(), key=lambda t: (len(t[0]), t[0])):
            counts = Counter(monomial)
            shown = {name: name if names_in(name) == {name} else f"({name})" for name in counts}
            names = "·".join(shown[name] if power == 1 else f"{shown[name]}^{power}"
                             for name, power in sorted(counts.items()))
            parts.append(_short(coefficient) + (f"·{names}" if names else ""))
        return " + ".join(parts)


_FUNCTIONS = {"floor": math.floor, "ceil": math.ceil, "Max": max, "Min": min, "max": max, "min": min}
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def size_of(name: str, dims: dict[str, int]) -> int:
    """A symbolic size's value: `dims[name]`, or a computed size (an arithmetic expression over named sizes, as
    ONNX Runtime's symbolic shape inference writes them) evaluated with `dims` (absent names: 1); else 1."""
    if name in dims:
        return dims[name]
    try:
        value = _evaluate(ast.parse(_protected(name), mode="eval").body, dims)
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, RecursionError):
        return 1
    return max(int(value), 0)


def _protected(name: str) -> str:
    """`name` with dotted size names (`p2o.DynamicDimension.1`) made single identifiers for the parser."""
    return re.sub(r"[A-Za-z_][\w]*(?:\.\w+)+", lambda m: "_" + m.group(0).replace(".", "__dot__"), name)


def _evaluate(node: ast.AST, dims: dict[str, int]) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name):
        return dims.get(node.id[1:].replace("__dot__", ".") if "__dot__" in node.id else node.id, 1)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left, dims), _evaluate(node.right, dims))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand, dims))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
            and not node.keywords:
        return _FUNCTIONS[node.func.id](*(_evaluate(arg, dims) for arg in node.args))
    raise ValueError(f"not a size expression: {ast.dump(node)}")


def names_in(name: str) -> set[str]:
    """The named sizes inside a computed size (the name itself when it is a plain one)."""
    try:
        tree = ast.parse(_protected(name), mode="eval")
    except SyntaxError:
        return {name}
    names = {n.id[1:].replace("__dot__", ".") if "__dot__" in n.id else n.id for n in ast.walk(tree)
             if isinstance(n, ast.Name) and n.id not in _FUNCTIONS}
    return names if not isinstance(tree.body, ast.Name) else {name}


def _short(number: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.3g}{unit}"
    return str(number)
