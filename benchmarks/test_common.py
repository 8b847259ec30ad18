"""The benchmarks' own helpers, checked (pytest collects this file too)."""

import _common


def test_the_benchmark_helpers_deal_out_distinct_multipliers():
    model = _common.mlp(3, 4)
    pairs = _common.assignment(model, 4)
    assert [m for _, m in pairs] == _common.distinct_multipliers(4) + \
        _common.distinct_multipliers(4)[:2]
    assert len(set(_common.distinct_multipliers(25))) == 25
