"""Metadata filters in LangChain's operator language, compiled to predicates.

A filter is a mapping from field names to conditions, all of which must
hold::

    {"source": "a.md"}                          # equality
    {"page": {"$gte": 3, "$lt": 10}}             # several operators: all hold
    {"lang": ["en", "fr"]}                       # a list means $in
    {"$or": [{"lang": "en"}, {"draft": {"$ne": True}}]}
    {"$not": {"source": "old.md"}}

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin`` on a field, ``$and $or``
(a list of filters) and ``$not`` (one filter) at any level. A callable
``metadata -> bool`` is accepted too, as LangChain's FAISS does.

The whole filter is validated when compiled, so a malformed one (or one
nested more than 32 levels deep) raises :class:`FilterError` before any
search runs. Evaluation never raises:

- a missing field matches only ``$ne`` and ``$nin``;
- comparisons between types that do not order (a string and a number)
  are false, not errors;
- booleans equal only booleans, so ``{"page": 1}`` does not match
  ``page=True`` (Python's ``True == 1`` would).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from cachedvec.errors import FilterError

Metadata = Mapping[str, Any]
Predicate = Callable[[Metadata], bool]
Filter = Mapping[str, Any] | Callable[[Metadata], bool]

_MISSING = object()
_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_FIELD_OPERATORS = {"$eq", "$ne", "$in", "$nin", *_ORDERINGS}
# Deep enough for any hand-written or generated filter; shallow enough that
# compiling and evaluating (both recursive) stay far from Python's limit.
MAX_DEPTH = 32
_LOGICAL_OPERATORS = {"$and", "$or", "$not"}


def compile_filter(spec: Filter | None) -> Predicate | None:
    """Turn a filter into a predicate over metadata; ``None`` means no filter."""
    if spec is None:
        return None
    if callable(spec) and not isinstance(spec, Mapping):
        return _guard_callable(spec)
    return _compile_mapping(spec, "filter", 0)


def _guard_callable(function: Callable[[Metadata], Any]) -> Predicate:
    def predicate(metadata: Metadata) -> bool:
        return bool(function(metadata))

    return predicate


def _compile_mapping(spec: Any, where: str, depth: int) -> Predicate:
    if depth > MAX_DEPTH:
        raise FilterError(f"filter is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(spec, Mapping):
        raise FilterError(f"{where} must be a dict, got {type(spec).__name__}")
    if not spec:
        raise FilterError(f"{where} is an empty dict")
    parts: list[Predicate] = []
    for key, condition in spec.items():
        if not isinstance(key, str):
            raise FilterError(f"{where}: field names must be strings, got {key!r}")
        if key in _LOGICAL_OPERATORS:
            parts.append(_compile_logical(key, condition, f"{where}.{key}", depth))
        elif key.startswith("$"):
            raise FilterError(f"{where}: unknown operator {key!r}")
        else:
            parts.append(_compile_field(key, condition, f"{where}.{key}"))
    return parts[0] if len(parts) == 1 else _all_of(parts)


def _compile_logical(op: str, argument: Any, where: str, depth: int) -> Predicate:
    if op == "$not":
        inner = _compile_mapping(argument, where, depth + 1)
        return lambda metadata: not inner(metadata)
    if not isinstance(argument, (list, tuple)):
        raise FilterError(f"{where} takes a list of filters, got {type(argument).__name__}")
    parts = [_compile_mapping(sub, f"{where}[{i}]", depth + 1) for i, sub in enumerate(argument)]
    return _all_of(parts) if op == "$and" else _any_of(parts)


def _all_of(parts: list[Predicate]) -> Predicate:
    return lambda metadata: all(part(metadata) for part in parts)


def _any_of(parts: list[Predicate]) -> Predicate:
    return lambda metadata: any(part(metadata) for part in parts)


def _compile_field(field: str, condition: Any, where: str) -> Predicate:
    if isinstance(condition, Mapping):
        if not condition:
            raise FilterError(f"{where} has an empty operator dict")
        tests = [_compile_operator(op, arg, f"{where}.{op}") for op, arg in condition.items()]
    elif isinstance(condition, (list, tuple)):
        tests = [_compile_operator("$in", condition, where)]
    else:
        tests = [_compile_operator("$eq", condition, where)]

    def predicate(metadata: Metadata) -> bool:
        value = metadata.get(field, _MISSING)
        return all(test(value) for test in tests)

    return predicate


def _compile_operator(op: Any, argument: Any, where: str) -> Callable[[Any], bool]:
    if not isinstance(op, str) or op not in _FIELD_OPERATORS:
        known = ", ".join(sorted(_FIELD_OPERATORS))
        raise FilterError(f"{where}: unknown operator {op!r} (known: {known})")
    if op in ("$in", "$nin"):
        if not isinstance(argument, (list, tuple, set, frozenset)):
            raise FilterError(f"{where} takes a list, got {type(argument).__name__}")
        for item in argument:
            _check_scalar(item, where)
        is_in = _membership(list(argument))
        return is_in if op == "$in" else lambda value: not is_in(value)
    _check_scalar(argument, where)
    if op == "$eq":
        return lambda value: _equal(value, argument)
    if op == "$ne":
        return lambda value: not _equal(value, argument)
    if isinstance(argument, bool) or argument is None:
        raise FilterError(f"{where} needs a number or a string, got {argument!r}")
    compare = _ORDERINGS[op]

    def ordered(value: Any) -> bool:
        if value is _MISSING or isinstance(value, bool):
            return False
        try:
            return bool(compare(value, argument))
        except TypeError:
            return False

    return ordered


def _check_scalar(argument: Any, where: str) -> None:
    if argument is not None and not isinstance(argument, (str, int, float)):
        raise FilterError(
            f"{where} compares with {type(argument).__name__}; use a string, number, bool or None"
        )


def _equal(value: Any, expected: Any) -> bool:
    if value is _MISSING or isinstance(value, bool) != isinstance(expected, bool):
        return False
    return bool(value == expected)


def _membership(options: list[Any]) -> Callable[[Any], bool]:
    # Two sets keep membership O(1) while booleans still equal only booleans.
    booleans = {option for option in options if isinstance(option, bool)}
    others = {option for option in options if not isinstance(option, bool)}

    def is_in(value: Any) -> bool:
        if value is _MISSING:
            return False
        if isinstance(value, bool):
            return value in booleans
        try:
            return value in others
        except TypeError:  # an unhashable value (a list or dict) equals no scalar
            return False

    return is_in
