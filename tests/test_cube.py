"""The giant and tiny formulas, width solving, and `rubik twist`."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import rubik
from rubik.cli import main
from rubik.cube.formula import FormulaError, TinyFormula
from rubik.cube.giant import flops_ratio, giant, phi_for_ratio
from rubik.cube.solve import macs_of
from rubik.cube.twist import LATENCY_TOLERANCE, Twister, parse_latency, parse_macs
from rubik.errors import RubikError
from rubik.models import get_spec

TINYNETS = {"tinynet_a": 0.9, "tinynet_b": 0.5, "tinynet_c": 0.25, "tinynet_d": 0.13, "tinynet_e": 0.06}


@pytest.fixture(scope="module")
def twister():
    return Twister("efficientnet_b0")


def test_giant_formula_both_directions():
    assert giant(0) == (1.0, 1.0, 1.0)
    r, d, w = giant(-4)
    assert math.isclose(d, 1.2 ** -4) and math.isclose(w, 1.1 ** -4) and math.isclose(r, 1.15 ** -4)
    for phi in (-3.7, -1, 0.5, 2.25):
        assert math.isclose(phi_for_ratio(flops_ratio(phi)), phi)
    assert 1.9 < flops_ratio(1) < 2.0  # alpha beta^2 gamma^2 ~= 2: each phi doubles FLOPs


def test_refit_reproduces_tinynets(twister):
    for name, c in TINYNETS.items():
        result = twister.to_ratio(c)
        tiny = get_spec(name)
        assert abs(result.error) <= 0.01
        assert abs(result.spec.resolution / tiny.resolution - 1) < 0.05, name
        assert abs(result.spec.depth / tiny.depth - 1) < 0.03, name
        assert abs(result.spec.width / tiny.width - 1) < 0.08, name


def test_leave_one_out_tinynet_c():
    formula = TinyFormula.load().without("tinynet_c")
    assert all(p.name != "tinynet_c" for p in formula.points)
    p = formula.predict(0.25)
    assert abs(p.r / 0.821 - 1) < 0.10 and abs(p.d / 0.85 - 1) < 0.10
    result = Twister("efficientnet_b0", formula=formula).to_ratio(0.25)
    assert abs(result.spec.resolution / 184 - 1) < 0.10 and abs(result.spec.depth / 0.85 - 1) < 0.10


@pytest.mark.parametrize("base", ["efficientnet_b0", "ghostnet_100"])
def test_twenty_budgets_hit_their_macs(base):
    twister = Twister(base)
    lo, hi = twister.feasible_range()
    budgets = np.geomspace(lo * 1.001, hi, 20)
    for target in budgets:
        result = twister.to_macs(float(target))
        assert result.macs == macs_of(result.spec)  # the counted model is the one described
        assert abs(result.macs / target - 1) <= 0.01, (target, result.spec)


@pytest.mark.parametrize("base", ["resnet50", "ghostnetv2_100", "ghostnetv3_100"])
def test_new_family_bases_twist_within_one_percent(base):
    """Twisting follows the family table: a newly registered family twists with no change in cube/."""
    from rubik.models import MODELS
    from rubik.profile import count

    if base not in MODELS:
        pytest.skip(f"{base} is not registered yet")
    twister = Twister(base)
    for ratio in (0.25, 0.5):
        result = twister.to_ratio(ratio)
        assert abs(result.error) <= 0.01, (base, ratio, result.spec)
        assert result.spec.family == twister.base.family and result.spec.depth < 2
    model = rubik.create_model(result.spec)
    assert count(model, result.spec.resolution)[0] == result.macs  # the plan's MACs are the model's


def test_twisted_spec_builds_the_model_it_describes(twister):
    from rubik.profile import count

    result = twister.to_macs(35e6)
    model = rubik.create_model(result.to_dict()["model"])
    assert count(model, result.spec.resolution)[0] == result.macs


def test_budget_errors_give_the_feasible_range(twister):
    lo, hi = twister.feasible_range()
    with pytest.raises(RubikError, match=r"feasible: .* M MACs"):
        twister.to_macs(lo * 0.5)
    with pytest.raises(RubikError, match="giant"):
        twister.to_macs(hi * 1.5)
    with pytest.raises(RubikError, match="no cube"):
        Twister("mobilenetv3_small_100")


def test_giant_method_grows_and_shrinks():
    giant_twister = Twister("efficientnet_b0", method="giant")
    for c in (0.0625, 0.5, 2.0):
        result = giant_twister.to_ratio(c)
        assert abs(result.error) <= 0.01
        r, d, _ = giant(result.phi)
        assert result.spec.depth == pytest.approx(d)
        assert abs(result.spec.resolution - 224 * r) <= 0.07 * 224 * r


def test_latency_budget_bisects_measured_latency(twister):
    measured = []

    def fake_latency(spec):  # a machine where latency is MACs / 10 GMAC/s plus overhead
        ms = macs_of(spec) / 1e7 + 0.5
        measured.append(ms)
        return ms

    result = twister.to_latency(10.0, fake_latency)
    assert result.latency_ms <= 10.0 and result.latency_ms > 8.5
    with pytest.raises(RubikError, match="below the fastest"):
        twister.to_latency(0.1, fake_latency)


# Input sizes in steps of 32 px (a detector's), on machines where the step above `edge` px adds `step_ms`:
# - grows: the step above 160 px costs more than the budget left, so the bisection on c alone stops 15 % under it;
#   the twist grows depth and width at 160 px instead;
# - narrows: as the Lite detector measured, every model the formula makes at 192 px is over the budget and even the
#   largest at 160 px far under it (the tiny formula stops at c = 1); a narrower, shallower model at 192 px fits;
# - climbs: the formula's model at c = 1 (192 px) is 35 % under the budget and c cannot grow past 1; a narrower
#   model one step up fits.
@pytest.mark.parametrize("ms_per_macs, overhead, edge, step_ms, budget, expected", [
    (1e-7, 0.5, 160, 100.0, 10.0, 160),  # grows
    (1e-8, 0.0, 160, 9.4, 10.0, 192),  # narrows
    (1e-8, 0.0, 192, 5.0, 6.0, 224),  # climbs
], ids=["grows", "narrows", "climbs"])
def test_latency_budget_across_a_resolution_step(ms_per_macs, overhead, edge, step_ms, budget, expected):
    twister = Twister("efficientnet_b0", resolution_step=32, max_depth_change=0.1)

    def stepped_latency(spec):
        return macs_of(spec) * ms_per_macs + overhead + (step_ms if spec.resolution > edge else 0.0)

    result = twister.to_latency(budget, stepped_latency)
    assert result.spec.resolution == expected
    assert budget * (1 - LATENCY_TOLERANCE) <= result.latency_ms <= budget


def test_budget_parsing():
    assert parse_macs("100M") == 100e6 and parse_macs("1.2G") == 1.2e9 and parse_macs("35e6") == 35e6
    assert parse_latency("4ms") == 4 and parse_latency("800us") == pytest.approx(0.8)
    with pytest.raises(RubikError, match="100M"):
        parse_macs("a lot")


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["points"][2].update(d=-1), r"points\[2\]\.d"),
    (lambda d: d["points"][1].pop("r"), r"points\[1\]\.r"),
    (lambda d: d.update(points="none"), "'points'"),
    (lambda d: d.update(format="other"), "'format'"),
    (lambda d: d["points"][3].update(c=339), r"points\[3\]\.c"),
])
def test_malformed_formula_names_the_field(tmp_path, mutate, field):
    data = TinyFormula.load().to_dict()
    mutate(data)
    path = tmp_path / "f.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FormulaError, match=field):
        TinyFormula.load(path)


def test_formula_round_trip_and_too_few_points(tmp_path):
    formula = TinyFormula.load()
    path = tmp_path / "f.json"
    formula.save(path)
    again = TinyFormula.load(path)
    assert again.points == formula.points and again.rules == formula.rules
    data = formula.to_dict()
    data["points"] = data["points"][:3]  # B0 (not fitted) and two TinyNets
    path.write_text(json.dumps(data))
    with pytest.raises(FormulaError, match="at least 3"):
        TinyFormula.load(path)
    with pytest.raises(FormulaError, match="cannot read"):
        TinyFormula.load(tmp_path / "missing.json")


def test_cli_twist_writes_spec_and_plot(tmp_path, capsys):
    spec_path, png = tmp_path / "spec.json", tmp_path / "curves.png"
    assert main(["twist", "--flops", "35M", "--out", str(spec_path), "--plot", str(png), "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "MACs" in out and "GP band" in out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    model = rubik.create_model(str(spec_path))
    data = json.loads(spec_path.read_text())
    assert abs(data["twist"]["macs"] / 35e6 - 1) <= 0.01 and model.spec.name == data["model"]["name"]
    assert main(["twist", "--flops", "1M"]) == 2
    assert "feasible" in capsys.readouterr().err


def test_reference_formula_drawn_beside_a_fitted_one():
    """search plot's Fig. 3 draws the paper's formula beside the study's: its curves follow the paper's GP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rubik.cube.plot import draw_reference

    paper = TinyFormula.load()
    fig, axes = plt.subplots(1, 3)
    draw_reference(axes, paper, c_lo=0.05)
    for ax, dim in zip(axes, ("r", "d", "w"), strict=True):
        (line,) = [ln for ln in ax.get_lines() if paper.path in ln.get_label()]
        cs, values = line.get_xdata(), line.get_ydata()
        assert cs[0] == pytest.approx(0.05) and cs[-1] == pytest.approx(1.0)
        p = paper.predict(0.25)
        expected = {"r": p.r, "d": p.d, "w": math.sqrt(0.25 / (p.r ** 2 * p.d))}[dim]
        assert np.interp(0.25, cs, values) == pytest.approx(expected, rel=0.02)
        (data,) = ax.collections  # the paper's TinyNets, not its unfitted base
        assert len(data.get_offsets()) == len(paper.fitted)
    plt.close(fig)


def test_latency_against_an_anchor_cancels_a_drift_of_the_machine(monkeypatch):
    # A machine that slows 10 % with every timing loop (a shared VM drifts by 15 % within minutes): timed alone,
    # the same model reads slower each time; timed against an anchor, it reads its cost at the first speed.
    from rubik.deploy import bench

    speed = [1.0]

    def drifting(fns, runs=100, **_):
        speed[0] *= 1.1
        return {k: [fn.resolution / 100 * speed[0]] * runs for k, fn in fns.items()}  # cost: its input size

    monkeypatch.setattr(bench, "_latency_file", lambda graph, spec, *a: spec)
    monkeypatch.setattr(bench, "_ort_runner", lambda path, x, threads: path)
    monkeypatch.setattr(bench, "time_interleaved", drifting)
    model, anchor = get_spec("tinynet_e"), replace(get_spec("tinynet_e"), resolution=200)
    alone = bench.spec_latency("onnxruntime", runs=4)
    assert alone(model) * 1.05 < alone(model)
    speed[0] = 1.0
    against = bench.spec_latency("onnxruntime", runs=4, anchor=anchor)
    first = against.anchor_ms / 2.0  # the model's cost at the speed the anchor was first timed at
    assert against(model) == pytest.approx(first * model.resolution / 100, rel=0.01)
    assert against(model) == pytest.approx(first * model.resolution / 100, rel=0.01)
