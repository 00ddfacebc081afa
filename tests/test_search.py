"""rubik search: the plan, failed-trial recording, resume after a kill, two workers, fit and plots.

Trials train for real only in the kill-and-resume test (6 trials, 1 epoch on digits at <= 26 px);
elsewhere a stand-in training function returns an accuracy computed from the model, so the tests
exercise the study machinery, not the trainer (tests/test_train.py covers that).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rubik.errors import RubikError
from rubik.search.study import SearchSettings, create_or_join, open_storage, plan, run_worker, twisted_spec

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SMALL = dict(base_resolution=32, r_range=[0.5, 0.8], d_range=[0.5, 1.2], epochs=1, batch_size=128)


def fake_train(config, run_dir, progress=False):
    """Accuracy that rises with resolution and depth, so the front and the fit have something to find."""
    spec = config.model
    top1 = 50 + 20 * math.log(spec["resolution"]) + 10 * spec["depth"]
    return {"best": {"top1": top1, "top5": 99.0}}


def states(study) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(t.state.name for t in study.get_trials()))


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def test_plan_is_deterministic_spread_and_prefix_stable():
    s = SearchSettings(budgets=[0.5, 0.25], seed=3, **SMALL)
    p6, p10 = plan(s, 6), plan(s, 10)
    assert p10[:6] == p6  # topping a study up keeps the trials it had
    assert plan(SearchSettings(budgets=[0.5, 0.25], seed=4, **SMALL), 6) != p6
    assert [p["params"]["c"] for p in p6] == [0.5, 0.25] * 3  # budgets take turns
    # Each budget's first 4 points are a scrambled Sobol (0, 2, 2)-net scaled into the ranges: exactly one
    # point in each quarter of r's range and of d's (out of range, or a random draw, lands elsewhere).
    for budget in range(2):
        first4 = p10[budget::2][:4]
        for key, (lo, hi) in (("r", SMALL["r_range"]), ("d", SMALL["d_range"])):
            quarters = sorted(math.floor((p["params"][key] - lo) / (hi - lo) * 4) for p in first4)
            assert quarters == [0, 1, 2, 3], (budget, key, [p["params"][key] for p in first4])
    assert len({(p["params"]["r"], p["params"]["d"]) for p in p10}) == 10


def test_twisted_spec_meets_the_budget():
    s = SearchSettings(budgets=[0.25], **SMALL)
    base, spec, macs, base_macs = twisted_spec(s, 0.25, 0.7, 0.9)
    assert abs(macs / (0.25 * base_macs) - 1) <= 0.02  # at ~22 px the MACs steps are coarse: about 1 %
    assert spec.width < base.width  # the budget was met by narrowing
    assert abs(spec.resolution - round(32 * 0.7)) <= 2 and spec.depth == pytest.approx(0.9 * base.depth)


def test_budgets_count_the_head_the_trials_train():
    # A 1000-way head is 1.3 M MACs, more than the rest of B0 at 32 px shrunk to c = 0.25: counted on
    # 10-class data it made a "c = 0.25" trial really c = 0.135, and c = 0.125 looked unreachable.
    from rubik.cube.solve import macs_of
    from rubik.search.study import check_budgets

    s = SearchSettings(budgets=[0.5, 0.25, 0.125], num_classes=10, **SMALL)
    check_budgets(s)
    base, spec, macs, base_macs = twisted_spec(s, 0.25, 0.7, 0.9)
    assert macs == macs_of(spec, num_classes=10) and base_macs == macs_of(base, num_classes=10)
    assert abs(macs / (0.25 * base_macs) - 1) <= 0.02
    with pytest.raises(RubikError, match="0.125 is outside"):
        check_budgets(SearchSettings(budgets=[0.125], **SMALL))  # what a 1000-class count says


def test_search_cli_records_the_data_s_class_count(tmp_path, monkeypatch):
    import rubik.search.study as study_module
    from rubik.cli import main
    from rubik.search.study import settings_of

    ran = []
    monkeypatch.setattr(study_module, "run_worker", lambda study, settings, *a, **k: ran.append(settings) or [])

    url = sqlite(tmp_path)
    args = ["search", "--study", "n", "--storage", url, "--data", "digits", "--budget", "0.5", "--trials", "1",
            "--base-resolution", "32", "--epochs", "1", "--out", str(tmp_path / "runs")]
    main(args)
    import optuna

    study = optuna.load_study(study_name="n", storage=url)
    assert settings_of(study).num_classes == 10 and ran[0].num_classes == 10


def test_bad_input_is_one_line_errors(tmp_path):
    storage = open_storage(sqlite(tmp_path), heartbeat=1)
    with pytest.raises(RubikError, match="not a MACs ratio"):
        create_or_join("a", SearchSettings(budgets=[1.5], **SMALL), 2, storage)
    with pytest.raises(RubikError, match="outside what efficientnet_b0 at 32 px can be shrunk to"):
        create_or_join("a", SearchSettings(budgets=[0.02], **SMALL), 2, storage)
    create_or_join("a", SearchSettings(budgets=[0.5], **SMALL), 2, storage)
    with pytest.raises(RubikError, match=r"created with other settings: budgets \[0.25\] \(study has \[0.5\]\)"):
        create_or_join("a", SearchSettings(budgets=[0.25], **SMALL), 2, storage)
    from rubik.search.study import load_study

    with pytest.raises(RubikError, match=r"no study named 'b'.*studies there: a"):
        load_study("b", storage)
    with pytest.raises(RubikError, match="bad storage URL"):
        open_storage("nosuchdb://x")
    from rubik.search.front import fit_formula

    with pytest.raises(RubikError, match="no completed trials to fit"):
        fit_formula(load_study("a", storage))


NO_PSYCOPG = textwrap.dedent("""
    import sys, importlib.abc

    class NoPsycopg(importlib.abc.MetaPathFinder):  # as if psycopg was never installed
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("psycopg", "psycopg2"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoPsycopg())
    from rubik.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_missing_database_driver_names_the_module_and_package(tmp_path):
    def search_show(url):
        return subprocess.run([sys.executable, "-c", NO_PSYCOPG, "search", "show", "s", "--storage", url], env=ENV,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    # SQLAlchemy 2.1 imports psycopg (3) for a plain postgresql:// URL, psycopg2 only when asked for.
    result = search_show("postgresql://u:p@localhost:1/db")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "needs the Python module 'psycopg'" in result.stderr and "rubik-nets[postgres]" in result.stderr
    result = search_show("postgresql+psycopg2://u:p@localhost:1/db")
    assert "needs the Python module 'psycopg2'" in result.stderr and "psycopg2-binary" in result.stderr


def test_failed_trials_are_recorded_and_crashes_are_retried(tmp_path):
    from rubik.train.trainer import NonFiniteLossError

    storage = open_storage(sqlite(tmp_path), heartbeat=1)
    settings = SearchSettings(budgets=[0.5], **SMALL)
    study = create_or_join("f", settings, 4, storage)
    calls = []

    def flaky(config, run_dir, progress=False):
        calls.append(run_dir.name)
        if len(calls) == 2:
            raise NonFiniteLossError("loss became NaN or infinite at epoch 1, step 3; training stopped")
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return fake_train(config, run_dir)

    with pytest.raises(RubikError, match="trial 2 failed .*out of memory.*queued again"):
        run_worker(study, settings, "digits", tmp_path / "runs", train_fn=flaky, log=lambda _: None)
    run_worker(study, settings, "digits", tmp_path / "runs", train_fn=flaky, log=lambda _: None)  # the rerun
    trials = study.get_trials()
    assert states(study) == {"COMPLETE": 3, "FAIL": 2}
    diverged, crashed = [t for t in trials if t.state.name == "FAIL"]
    assert diverged.user_attrs["fail_reason"].startswith("diverged: loss became NaN")
    assert crashed.user_attrs["fail_reason"] == "RuntimeError: out of memory"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == crashed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == crashed.params
    # The diverged trial is not retried (it would diverge again): 3 of 4 planned trials have results.
    assert not [t for t in trials if t.system_attrs.get("failed_trial") == diverged.number]
    assert sorted(t.user_attrs["plan_index"] for t in trials if t.state.name == "COMPLETE") == [0, 2, 3]


def test_show_prints_progress_best_per_budget_and_front(tmp_path, capsys):
    from rubik.cli import main
    from rubik.search.study import _pop_waiting
    from rubik.train.trainer import NonFiniteLossError

    url = sqlite(tmp_path)
    settings = SearchSettings(budgets=[0.5, 0.25], **SMALL)
    study = create_or_join("p", settings, 8, open_storage(url, heartbeat=1))
    calls = []

    def partial(config, run_dir, progress=False):
        calls.append(run_dir.name)
        if len(calls) == 2:
            raise NonFiniteLossError("loss became NaN")  # given up: a retry would diverge again
        if len(calls) == 5:
            raise KeyboardInterrupt  # the worker is stopped; its trial is recorded and queued again
        return fake_train(config, run_dir)

    with pytest.raises(KeyboardInterrupt):
        run_worker(study, settings, "digits", tmp_path / "runs", train_fn=partial, log=lambda _: None)
    assert _pop_waiting(study) is not None  # another worker has just taken a trial
    capsys.readouterr()
    assert main(["search", "show", "p", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert ("progress: 3 of 8 planned trials done (38 %); 1 running; 2 failed (recorded; 1 given up, "
            "the rest retried); 4 left (3 waiting)") in out
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    for c in (0.5, 0.25):
        best = max((t for t in complete if t.params["c"] == c), key=lambda t: t.user_attrs["top1"])
        assert f"  c={c:<6} trial {best.number} (sobol) top-1 {best.user_attrs['top1']:.2f}%" in out
    front = {t.number for t in study.best_trials}
    assert f"Pareto front (top-1 up, MACs down): {len(front)} trial(s)" in out
    assert main(["search", "show", "p", "--storage", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {b["trial"] for b in shown["progress"]["front"]} == front and len(shown["trials"]) == 9


WORKER = textwrap.dedent("""
    import sys, time
    from rubik.search.study import SearchSettings, create_or_join, open_storage, run_worker

    def slow_train(config, run_dir, progress=False):
        time.sleep(0.5)
        return {"best": {"top1": float(config.model["resolution"]), "top5": 100.0}}

    settings = SearchSettings(budgets=[0.5, 0.25], base_resolution=32, r_range=[0.5, 0.8], d_range=[0.5, 1.2],
                              epochs=1)
    storage = open_storage(sys.argv[1], heartbeat=1)
    study = create_or_join("shared", settings, 12, storage)
    done = run_worker(study, settings, "digits", sys.argv[2], train_fn=slow_train, log=lambda _: None)
    print("DID", " ".join(str(o.number) for o in done))
""")


def test_two_workers_split_one_sqlite_study(tmp_path):
    import optuna

    url = sqlite(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(tmp_path / "runs")], env=ENV, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    did = [set(map(int, out.split("DID", 1)[1].split())) for out, _ in outs]
    study = optuna.load_study(study_name="shared", storage=url)
    assert states(study) == {"COMPLETE": 12}  # no surplus trials, none lost
    assert did[0] and did[1] and not did[0] & did[1]  # both worked, never on the same trial
    assert did[0] | did[1] == {t.number for t in study.get_trials()}
    complete = study.get_trials()
    assert sorted(t.user_attrs["plan_index"] for t in complete) == list(range(12))
    assert len({(t.params["c"], t.params["r"], t.params["d"]) for t in complete}) == 12
    assert len({t.user_attrs["worker"] for t in complete}) == 2


def test_kill_mid_study_and_rerun_finishes_without_redoing(tmp_path):
    """SIGKILL while a trial trains, then the same command again: 6 trials complete, none retrained."""
    import optuna
    from optuna.trial import TrialState

    url = sqlite(tmp_path)
    cmd = [sys.executable, "-m", "rubik.cli", "search", "--study", "digits6", "--storage", url, "--data", "digits",
           "--budget", "0.5", "--trials", "6", "--epochs", "1", "--base-resolution", "32", "--r-range", "0.5", "0.8",
           "--d-range", "0.5", "1.2", "--batch-size", "128", "--threads", "1", "--heartbeat", "1",
           "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storage = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()[-2000:]}"
            if storage is None:
                if not (tmp_path / "studies.db").exists():
                    continue
                # The search may be creating the schema right now: open it as rubik does, retrying that race.
                storage = open_storage(url)
            if "digits6" not in optuna.study.get_all_study_names(storage):
                continue
            study = optuna.load_study(study_name="digits6", storage=storage)
            trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.RUNNING))
            if any(t.state == TrialState.COMPLETE for t in trials) and any(t.state == TrialState.RUNNING
                                                                          for t in trials):
                break
        else:
            pytest.fail("no trial completed within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {t.number: (t.params, t.values, t.user_attrs["top1"])
              for t in study.get_trials(states=(TrialState.COMPLETE,))}
    killed = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert before and len(killed) == 1
    storage.engine.dispose()  # hold no SQLite connection while the rerun writes

    rerun = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = optuna.load_study(study_name="digits6", storage=url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    assert sorted(t.user_attrs["plan_index"] for t in complete) == list(range(6))  # each planned trial once
    assert len({(t.params["r"], t.params["d"]) for t in complete}) == 6
    for number, (params, values, top1) in before.items():  # finished trials were kept, not retrained
        t = study.trials[number]
        assert (t.state, t.params, t.values, t.user_attrs["top1"]) == (TrialState.COMPLETE, params, values, top1)
    # The killed trial is recorded as failed; its retry (same parameters) completed.
    assert study.trials[killed[0]].state == TrialState.FAIL
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retry) == 1 and retry[0].params == study.trials[killed[0]].params
    # Every completed trial trained in its own run directory, once.
    assert all(json.loads((Path(t.user_attrs["run_dir"]) / "best.json").read_text())["top1"] == t.user_attrs["top1"]
               for t in complete)


def test_fit_writes_a_formula_twist_accepts_and_plots(tmp_path):
    from rubik.cube.formula import TinyFormula
    from rubik.cube.twist import Twister
    from rubik.search.front import beside_paper, fit_formula, rows, save_formula
    from rubik.search.plots import plot_study

    storage = open_storage(sqlite(tmp_path), heartbeat=1)
    settings = SearchSettings(budgets=[0.6, 0.4, 0.25], references=True, **SMALL)
    study = create_or_join("fit", settings, 6, storage)
    run_worker(study, settings, "digits", tmp_path / "runs", train_fn=fake_train, log=lambda _: None)
    assert states(study) == {"COMPLETE": 6 + 2 * 3}
    table = rows(study)
    front = [r for r in table if r["front"]]
    for r in front:  # nothing dominates a front trial
        assert not any(o["top1"] >= r["top1"] and o["macs_m"] < r["macs_m"] for o in table if o is not r)

    formula, provenance = fit_formula(study, include_dominated=True, storage_url=storage.url)
    path = tmp_path / "formula.json"
    save_formula(formula, provenance, path)
    loaded = TinyFormula.load(path)
    assert len(loaded.fitted) == 3 and provenance["study"] == "fit"
    for p in loaded.fitted:  # each point is its budget's most accurate trial
        best = max((r for r in table if r["state"] == "COMPLETE" and r["c"] == pytest.approx(p.c, rel=0.02)),
                   key=lambda r: r["top1"])
        assert p.top1 == pytest.approx(best["top1"], abs=1e-3) and p.r == pytest.approx(best["r"], abs=1e-3)
    result = Twister("efficientnet_b0", "tiny", loaded).to_ratio(0.4)
    assert abs(result.error) <= 0.01
    paper_path, beside = beside_paper(loaded, settings)  # `search fit` prints each point beside the paper's
    paper = TinyFormula.load()
    assert paper_path == paper.path and [row["c"] for row in beside] == [p.c for p in loaded.fitted]
    for row, p in zip(beside, loaded.fitted, strict=True):
        ref = paper.predict(p.c)
        assert (row["r"], row["d"]) == (p.r, p.d) and (row["r_paper"], row["d_paper"]) == (ref.r, ref.d)
        assert row["w_paper"] ** 2 * ref.r ** 2 * ref.d == pytest.approx(p.c)

    cli = subprocess.run([sys.executable, "-m", "rubik.cli", "twist", "--ratio", "0.4", "--formula", str(path),
                          "--no-latency", "--json"], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["twist"]["ratio"] == pytest.approx(0.4)

    pngs = plot_study(study, tmp_path / "plots", str(path))
    names = sorted(p.name for p in pngs)
    assert names == ["fig1_front.png", "fig2_c0.25.png", "fig2_c0.4.png", "fig2_c0.6.png", "fig3_curves.png"]
    assert all(p.stat().st_size > 10_000 for p in pngs)


def test_fit_with_dominated_budgets_says_what_helps(tmp_path):
    """Three budgets whose bests tie: the smallest dominates the others, and the error says to add trials or
    pass --include-dominated (not to run more budgets, which the study already has)."""
    from rubik.search.front import fit_formula

    storage = open_storage(sqlite(tmp_path), heartbeat=1)
    settings = SearchSettings(budgets=[0.6, 0.4, 0.25], **SMALL)
    study = create_or_join("ties", settings, 3, storage)
    run_worker(study, settings, "digits", tmp_path / "runs", log=lambda _: None,
               train_fn=lambda config, run_dir, progress=False: {"best": {"top1": 50.0, "top5": 99.0}})
    with pytest.raises(RubikError, match="giving 1 point") as e:
        fit_formula(study)
    assert "add trials" in str(e.value) and "--include-dominated" in str(e.value)
    assert "3 or more budgets" not in str(e.value)
    formula, _ = fit_formula(study, include_dominated=True)
    assert len(formula.fitted) == 3


def test_a_worker_killed_right_after_claiming_a_trial_leaves_it_stale(tmp_path):
    """The cause of a rerun that waited forever: a worker SIGKILLed after it claimed a trial (WAITING -> RUNNING)
    but before its heartbeat thread's first beat left a RUNNING trial with no heartbeat, which Optuna never
    counts as stale. The claim now carries the first heartbeat, so the trial goes stale and is retried."""
    import optuna
    from optuna.trial import TrialState

    from rubik.search.study import _fail_stale, _pop_waiting

    storage = open_storage(sqlite(tmp_path), heartbeat=1)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    assert _pop_waiting(study) is not None  # claimed; the worker dies here, before any heartbeat thread runs
    assert study.trials[0].state == TrialState.RUNNING
    time.sleep(storage.grace_period + 1.5)
    _fail_stale(study)
    assert study.trials[0].state == TrialState.FAIL
    storage.engine.dispose()
