"""Counts that depend on symbolic sizes: a polynomial in named dims (batch, seq…) with integer coefficients,
so that MACs of a transformer can be shown as a formula and evaluated at the sizes a user runs."""

from __future__ import annotations

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
        """The count with every symbolic size from `dims` (absent ones: 1)."""
        total = 0
        for monomial, coefficient in self.terms.items():
            value = coefficient
            for name in monomial:
                value *= (dims or {}).get(name, 1)
            total += value
        return total

    def symbols(self) -> set[str]:
        return {name for monomial in self.terms for name in monomial}

    def __str__(self) -> str:
        """Highest degree first: '4.7M·batch·seq + 24.6k·batch·seq²'."""
        if not self.terms:
            return "0"
        parts = []
        for monomial, coefficient in sorted(self.terms.items(), key=lambda t: (len(t[0]), t[0])):
            counts = Counter(monomial)
            names = "·".join(name if power == 1 else f"{name}^{power}" for name, power in sorted(counts.items()))
            parts.append(_short(coefficient) + (f"·{names}" if names else ""))
        return " + ".join(parts)


def _short(number: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.3g}{unit}"
    return str(number)
