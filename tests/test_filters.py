"""Metadata filters: LangChain's operators, strict validation, total evaluation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachedvec.errors import FilterError
from cachedvec.index.filters import compile_filter

DOC = {"source": "a.md", "page": 3, "score": 0.5, "lang": "en", "draft": False, "tags": ["x"]}


def matches(spec: Any, metadata: dict[str, Any] = DOC) -> bool:
    predicate = compile_filter(spec)
    assert predicate is not None
    return predicate(metadata)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"source": "a.md"}, True),
        ({"source": "b.md"}, False),
        ({"page": {"$eq": 3}}, True),
        ({"page": {"$ne": 3}}, False),
        ({"page": {"$ne": 4}}, True),
        ({"page": {"$gt": 2}}, True),
        ({"page": {"$gt": 3}}, False),
        ({"page": {"$gte": 3}}, True),
        ({"page": {"$lt": 3}}, False),
        ({"page": {"$lte": 3}}, True),
        ({"score": {"$gt": 0.25, "$lt": 0.75}}, True),
        ({"score": {"$gt": 0.25, "$lt": 0.5}}, False),
        ({"lang": {"$gte": "en", "$lt": "fr"}}, True),
        ({"page": {"$in": [1, 2, 3]}}, True),
        ({"page": {"$in": [1, 2]}}, False),
        ({"page": {"$nin": [1, 2]}}, True),
        ({"page": {"$nin": [3]}}, False),
        ({"lang": ["en", "fr"]}, True),
        ({"lang": ["de"]}, False),
        ({"source": "a.md", "page": 3}, True),
        ({"source": "a.md", "page": 4}, False),
        ({"$and": [{"source": "a.md"}, {"page": {"$gte": 3}}]}, True),
        ({"$and": [{"source": "a.md"}, {"page": {"$gt": 3}}]}, False),
        ({"$or": [{"source": "b.md"}, {"page": 3}]}, True),
        ({"$or": [{"source": "b.md"}, {"page": 4}]}, False),
        ({"$not": {"source": "b.md"}}, True),
        ({"$not": {"source": "a.md"}}, False),
        ({"$or": [{"$not": {"lang": "en"}}, {"$and": [{"draft": False}, {"page": 3}]}]}, True),
        ({"$and": []}, True),
        ({"$or": []}, False),
        ({"draft": False}, True),
        ({"tags": {"$eq": "x"}}, False),
    ],
)
def test_operators(spec: dict[str, Any], expected: bool) -> None:
    assert matches(spec) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"missing": "x"}, False),
        ({"missing": {"$eq": None}}, False),
        ({"missing": {"$gt": 1}}, False),
        ({"missing": {"$in": [None, 1]}}, False),
        ({"missing": {"$ne": "x"}}, True),
        ({"missing": {"$nin": ["x"]}}, True),
        ({"$not": {"missing": "x"}}, True),
    ],
)
def test_missing_field_matches_only_negations(spec: dict[str, Any], expected: bool) -> None:
    assert matches(spec) is expected


def test_booleans_equal_only_booleans() -> None:
    assert not matches({"flag": 1}, {"flag": True})
    assert not matches({"flag": True}, {"flag": 1})
    assert not matches({"flag": {"$in": [1]}}, {"flag": True})
    assert not matches({"n": {"$in": [True]}}, {"n": 1})
    assert matches({"flag": {"$in": [True]}}, {"flag": True})
    assert matches({"n": {"$in": [1.0]}}, {"n": 1})
    assert not matches({"flag": {"$gt": 0}}, {"flag": True})


def test_comparisons_across_types_are_false_not_errors() -> None:
    assert not matches({"page": {"$gt": "a"}}, {"page": 3})
    assert not matches({"page": {"$lt": 10}}, {"page": "3"})
    assert not matches({"page": {"$lt": 10}}, {"page": None})
    assert not matches({"page": {"$lt": 10}}, {"page": [1]})
    assert not matches({"page": {"$in": [1, 2]}}, {"page": [1, 2]})
    assert matches({"page": {"$nin": [1]}}, {"page": {"nested": 1}})


def test_callable_filter_is_used_as_is() -> None:
    assert matches(lambda m: m["page"] == 3)
    assert not matches(lambda m: m.get("page") == 4)


def test_no_filter_compiles_to_none() -> None:
    assert compile_filter(None) is None


@pytest.mark.parametrize(
    "spec",
    [
        "source",
        ["source"],
        42,
        {},
        {"page": {}},
        {"page": {"$foo": 1}},
        {"$foo": [{"page": 1}]},
        {"page": {"$in": 3}},
        {"page": {"$nin": "abc"}},
        {"page": {"$in": [[1]]}},
        {"page": {"$gt": [1]}},
        {"page": {"$gt": {"a": 1}}},
        {"page": {"$gt": True}},
        {"page": {"$lt": None}},
        {"page": {"$eq": {"a": 1}}},
        {"page": {"a": 1}},
        {"page": {"$eq": 1, "plain": 2}},
        {"$and": {"page": 1}},
        {"$or": [1, 2]},
        {"$or": [{}]},
        {"$not": [{"page": 1}]},
        {"$not": {}},
        {1: "x"},
        {"page": object()},
    ],
)
def test_malformed_filters_raise_filter_error(spec: Any) -> None:
    with pytest.raises(FilterError):
        compile_filter(spec)


def test_error_names_the_place() -> None:
    with pytest.raises(FilterError, match=r"filter\.\$or\[1\]\.page.*\$bogus"):
        compile_filter({"$or": [{"a": 1}, {"page": {"$bogus": 1}}]})


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
fields = st.sampled_from(["a", "b", "c"])
operators = st.sampled_from(
    ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$and", "$or", "$not", "$x"]
)
raw_filters = st.recursive(
    st.dictionaries(st.one_of(fields, operators), json_values, max_size=3),
    lambda inner: st.dictionaries(
        st.one_of(fields, operators), inner | st.lists(inner, max_size=3), max_size=3
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(spec=raw_filters, metadata=st.dictionaries(fields, json_values, max_size=3))
def test_any_input_compiles_or_raises_filter_error_and_never_fails_to_evaluate(
    spec: Any, metadata: dict[str, Any]
) -> None:
    try:
        predicate = compile_filter(spec)
    except FilterError:
        return
    assert predicate is not None
    assert predicate(metadata) in (True, False)


def test_nesting_is_limited_with_a_filter_error() -> None:
    spec: dict[str, Any] = {"a": 1}
    for _ in range(31):
        spec = {"$not": spec}
    assert matches(spec, {"a": 1}) is False  # 31 negations
    for _ in range(5000):
        spec = {"$not": spec}
    with pytest.raises(FilterError, match="nested"):
        compile_filter(spec)
