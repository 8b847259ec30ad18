"""compile_cost.py's pure parts, on fixed inputs (pytest collects this file
too); the timings themselves are the benchmark's, not a test's."""

import struct

import _common as c
import compile_cost as cc
import numpy as np
import pytest

NAMES = ("plain", "no rules", "layerwise_decay + no_decay", c.AGAIN)


def test_the_transformer_has_the_variables_its_layout_promises():
    options = dict(cc.DEFAULTS["quick"], width=8)
    for asked, blocks in ((50, 3), (100, 6)):
        assert cc.layout("transformer", asked) == blocks
        model, x, y = cc._model_and_data(asked, options)
        # Keras's own count: 16 a block (attention 8, two norms 4, MLP 4),
        # the embedding 1, the final norm 2, the head 2.
        assert len(model.trainable_variables) == 16 * blocks + 5
        assert x.shape == (options["batch"], options["sequence"])
        assert model(x).shape == y.shape
    import difflr

    # One group a block, as a KerasHub backbone: what layerwise_decay decays.
    names = [[layer.name for layer in g] for g in difflr.groups(model)]
    assert names[1:7] == [[f"transformer_layer_{k}"] for k in range(6)]


@pytest.mark.backend_free
def test_the_dense_layout_and_a_bad_model_name():
    assert [cc.layout("dense", n) for n in (1, 50, 2000)] == [1, 25, 1000]
    with pytest.raises(ValueError, match="'transformer' or 'dense', not 'resnet'"):
        cc.layout("resnet", 50)


@pytest.mark.backend_free
def test_llrd_keeps_the_lowest_group_at_one_percent_at_most_depths():
    assert cc.llrd_decay(1, 0.8) == 0.8
    assert cc.llrd_decay(12, 0.8) == 0.8  # 0.8 ** 11 = 0.086 stays above 1%
    deep = cc.llrd_decay(1001, 0.8)
    assert deep ** 1000 == pytest.approx(0.01)
    assert np.float32(deep ** 1000) > 0 and np.float32(0.8 ** 1000) == 0


@pytest.mark.backend_free
def test_the_schedule_mirrors_each_round_and_rotates_each_pair():
    jobs = cc.schedule([10, 20], ("a", "b", "c"), 4)
    assert jobs == [(0, 10, "a"), (0, 10, "b"), (0, 10, "c"),
                    (0, 20, "a"), (0, 20, "b"), (0, 20, "c"),
                    (1, 10, "c"), (1, 10, "b"), (1, 10, "a"),
                    (1, 20, "c"), (1, 20, "b"), (1, 20, "a"),
                    (2, 10, "b"), (2, 10, "c"), (2, 10, "a"),
                    (2, 20, "b"), (2, 20, "c"), (2, 20, "a"),
                    (3, 10, "a"), (3, 10, "c"), (3, 10, "b"),
                    (3, 20, "a"), (3, 20, "c"), (3, 20, "b")]


@pytest.mark.backend_free
def test_ratios_pair_each_round_with_both_plain_runs():
    seconds = {"plain": [1.0, 1.0, 1.0], c.AGAIN: [4.0, 1.0, 1.0],
               "no rules": [3.0, 1.2, 0.9], "layerwise_decay + no_decay": [2.0, 2.0, 2.0]}
    s = cc.summarize(seconds)
    # Plain per round: the geometric mean of both plain runs, 2, 1, 1.
    assert s["no rules"]["ratio"] == pytest.approx(1.2)  # median of 1.5, 1.2, 0.9
    assert s["layerwise_decay + no_decay"]["ratio"] == pytest.approx(2.0)  # 1, 2, 2
    assert s[c.AGAIN]["ratio"] == pytest.approx(1.0)  # A/A: 4, 1, 1 against plain
    assert s["no rules"]["ms"] == pytest.approx(1200.0)
    assert s["no rules"]["rounds"] == pytest.approx([3000.0, 1200.0, 900.0])



@pytest.mark.backend_free
def test_a_size_keeps_the_medians_of_each_part_and_what_it_ran_with():
    def run(seconds, setup):
        return {"seconds": seconds, "setup": setup, "fit": seconds - setup,
                "variables": 53, "jit_compile": True, "caches": {"dir": None}}

    runs = {"plain": [run(2.0, 0.1), run(4.0, 0.3)], c.AGAIN: [run(2.0, 0.1), run(4.0, 0.1)],
            "no rules": [run(3.0, 0.2), run(4.0, 0.4)],
            "layerwise_decay + no_decay": [run(2.0, 0.5), run(6.0, 0.7)]}
    done = cc.size_result(runs)
    assert (done["variables"], done["jit_compile"], done["caches"]) == (53, True, {"dir": None})
    v = done["variants"]
    assert v["no rules"]["ratio"] == pytest.approx(1.25)  # median of 3/2 and 4/4
    assert v["layerwise_decay + no_decay"]["ms"] == pytest.approx(4000.0)
    assert v["layerwise_decay + no_decay"]["setup"] == pytest.approx(0.6)
    assert v["layerwise_decay + no_decay"]["fit"] == pytest.approx(3.4)  # 1.5 and 5.3

def _results():
    def variants(plain, *ratios):
        return {name: {"ms": plain * r * 1e3, "ratio": r, "rounds": []}
                for name, r in zip(NAMES, (1.0,) + ratios)}

    return {"jax": {"200": {"variables": 197, "variants": variants(4.0, 1.3, 1.25, 0.99)},
                    "50": {"variables": 53, "variants": variants(2.5, 1.1, 1.12, 1.01)}},
            "torch": {"50": {"variables": 53, "variants": variants(0.5, 1.0, 1.02, 1.0)}}}


@pytest.mark.backend_free
def test_the_table_lists_sizes_in_order_with_seconds_and_ratios():
    options = dict(cc.DEFAULTS["full"], rounds={"jax": 2, "torch": 3}, width=32)
    lines = cc.report(_results(), options).splitlines()
    assert lines[0].startswith("A transformer-like stack (16 variables a block), width 32, ")
    assert "`jit_compile='auto'`, median of 2 (jax) / 3 (torch) rounds" in lines[0]
    assert lines[2:] == [
        "| backend | variables | plain s | no rules s | layerwise_decay + no_decay s "
        "| plain A/A |",
        "|---|---:|---:|---:|---:|---:|",
        "| jax | 53 | 2.50 | 2.75 (1.100) | 2.80 (1.120) | 1.010 |",
        "| jax | 197 | 4.00 | 5.20 (1.300) | 5.00 (1.250) | 0.990 |",
        "| torch | 53 | 0.50 | 0.50 (1.000) | 0.51 (1.020) | 1.000 |"]


@pytest.mark.backend_free
def test_the_figure_has_a_panel_per_backend(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curve.png"
    assert cc.plot(_results(), cc.DEFAULTS["full"], str(path))
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    # Two panels of 4.2 x 3.8 inches at 110 dpi.
    assert struct.unpack(">II", header[16:24]) == (924, 418)
