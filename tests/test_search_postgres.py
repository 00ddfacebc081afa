"""rubik search on a real PostgreSQL server (the `postgres` fixture): shared studies, a killed worker, a restart.

Workers are separate processes. Most run a stand-in training function that sleeps (the faults are in
the database's handling, not in the trainer); the restart-and-exit case runs the real `rubik search`
command with two-step trainings, since its one-line error is the CLI's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from rubik.search.study import SearchSettings, create_or_join, open_storage, run_worker

    url, out, seconds, trials, wait = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    workers = int(sys.argv[6])

    def slow_train(config, run_dir, progress=False):
        time.sleep(seconds)
        return {"best": {"top1": float(config.model["resolution"]), "top5": 100.0}}

    settings = SearchSettings(budgets=[0.5, 0.25], base_resolution=32, r_range=[0.5, 0.8], d_range=[0.5, 1.2],
                              epochs=1)
    # Start together: a worker slow to import torch must not find the study done, and all of them creating
    # the fresh database's tables at the same moment is the race open_storage must survive.
    ready = Path(out) / "ready"
    ready.mkdir(parents=True, exist_ok=True)
    (ready / str(os.getpid())).touch()
    deadline = time.monotonic() + 180
    while len(list(ready.iterdir())) < workers:
        if time.monotonic() > deadline:
            sys.exit("the other workers did not start")
        time.sleep(0.05)
    storage = open_storage(url, heartbeat=1)
    study = create_or_join("shared", settings, trials, storage)
    done = run_worker(study, settings, "digits", out, train_fn=slow_train, storage_wait=wait,
                      log=lambda line: print(line, flush=True))
    print("DID", " ".join(str(o.number) for o in done if o.state == "COMPLETE"), flush=True)
""")


def start_workers(url: str, tmp_path: Path, n: int, seconds: float, trials: int, wait: float = 60):
    return [subprocess.Popen([sys.executable, "-c", WORKER, url, str(tmp_path / "runs"), str(seconds), str(trials),
                              str(wait), str(n)], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(n)]


def finish(procs, timeout=300) -> list[tuple[int, str, str]]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        outs.append((p.returncode, out, err))
    return outs


def reader(url: str):
    """A storage that holds no connection between calls: the polls below open many, and pooled ones
    left for the garbage collector once filled the server's max_connections ("too many clients")."""
    import optuna
    from sqlalchemy.pool import NullPool

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool}, skip_table_creation=True,
                                       skip_compatibility_check=True)


def load(url: str):
    import optuna

    return optuna.load_study(study_name="shared", storage=reader(url))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def trials_in(url: str, *states: str):
    import optuna

    try:
        storage = reader(url)
        if "shared" not in optuna.study.get_all_study_names(storage):
            return []
    except optuna.exceptions.StorageInternalError:  # the workers have not made the tables yet
        return []
    study = optuna.load_study(study_name="shared", storage=storage)
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in states]


def assert_each_planned_trial_complete_once(study, planned: int):
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["plan_index"] for t in complete) == list(range(planned))
    assert len({(t.params["c"], t.params["r"], t.params["d"]) for t in complete}) == planned
    for t in study.get_trials():  # every failed trial was retried with its parameters and the retry completed
        if t.state.name == "FAIL":
            retries = [r for r in complete if r.system_attrs.get("failed_trial") == t.number]
            assert len(retries) == 1 and retries[0].params == t.params, t.number
    return complete


def test_three_workers_share_one_postgres_study(postgres, tmp_path):
    url = postgres.new_database()
    outs = finish(start_workers(url, tmp_path, 3, seconds=0.2, trials=9))
    for rc, _, err in outs:
        assert rc == 0, err[-2000:]
    did = [set(map(int, out.split("DID", 1)[1].split())) for _, out, _ in outs]
    study = load(url)
    assert Counter(t.state.name for t in study.get_trials()) == {"COMPLETE": 9}  # none lost, none extra
    assert all(did) and not (did[0] & did[1] or did[0] & did[2] or did[1] & did[2])  # all worked, no trial twice
    assert did[0] | did[1] | did[2] == {t.number for t in study.get_trials()}
    complete = assert_each_planned_trial_complete_once(study, 9)
    assert len({t.user_attrs["worker"] for t in complete}) == 3


def test_a_killed_worker_s_trial_is_retried_with_its_parameters(postgres, tmp_path):
    url = postgres.new_database()
    procs = start_workers(url, tmp_path, 3, seconds=1.0, trials=6)
    victim = procs[0]
    try:
        # Kill the first worker in the middle of a trial (its worker attribute names its pid).
        running = wait_for(lambda: [t for t in trials_in(url, "RUNNING")
                                    if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")], 120,
                           "the first worker to start a trial")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = running[0]
        outs = finish(procs[1:])
    finally:
        for p in procs:
            p.kill()
    for rc, _, err in outs:
        assert rc == 0, err[-2000:]
    study = load(url)
    assert study.trials[killed.number].state.name == "FAIL"  # recorded, once its heartbeat stopped
    retry = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.number]
    # The kill may land before the trial took its planned parameters (the snapshot above then has none):
    # the retry takes the plan's, and the killed trial recorded those or none.
    planned = study.trials[killed.number].system_attrs["fixed_params"]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == planned
    assert study.trials[killed.number].params in ({}, planned)
    assert retry[0].user_attrs["worker"] != killed.user_attrs["worker"]
    assert_each_planned_trial_complete_once(study, 6)
    assert Counter(t.state.name for t in study.get_trials()) == {"COMPLETE": 6, "FAIL": 1}


def test_workers_carry_on_across_a_database_restart(postgres, tmp_path):
    url = postgres.new_database()
    procs = start_workers(url, tmp_path, 3, seconds=0.8, trials=9)
    try:
        wait_for(lambda: len(trials_in(url, "COMPLETE")) >= 3 and trials_in(url, "RUNNING"), 120,
                 "trials to complete and run")
        in_flight = len(trials_in(url, "RUNNING"))
        postgres.stop()  # clients are cut off at once, as in a crash or a restart
        time.sleep(3)
        postgres.start()
        outs = finish(procs)
    finally:
        for p in procs:
            p.kill()
        if not postgres.running():
            postgres.start()
    for rc, out, err in outs:
        assert rc == 0, err[-2000:]
        assert "Traceback" not in out + err
    assert any("storage not answering" in out for _, out, _ in outs)  # the workers noticed, and went on
    study = load(url)
    assert_each_planned_trial_complete_once(study, 9)
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(failed) <= in_flight  # at most the trials that were running when the database went away


def test_a_worker_exits_cleanly_when_the_database_stays_down_and_resumes(postgres, tmp_path):
    import optuna

    url = postgres.new_database()
    cmd = [sys.executable, "-m", "rubik.cli", "search", "--study", "shared", "--storage", url, "--data", "digits",
           "--budget", "0.5", "--trials", "2", "--epochs", "1", "--base-resolution", "32", "--r-range", "0.5", "0.8",
           "--d-range", "0.5", "1.2", "--batch-size", "32", "--set", "steps_per_epoch=2", "--set", "ema_decay=0",
           "--threads", "1", "--heartbeat", "1", "--storage-wait", "3", "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: trials_in(url, "RUNNING") or proc.poll() is not None, 180, "the first trial to start")
        postgres.stop()
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
        if not postgres.running():
            postgres.start()
    assert proc.returncode == 2, out[-1000:] + err[-2000:]
    assert "Traceback" not in err and "error: lost the storage postgresql://rubik@localhost" in err, err[-2000:]
    assert "no answer for 3 s" in err and "rerun the same command" in err

    rerun = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = optuna.load_study(study_name="shared", storage=url)
    assert_each_planned_trial_complete_once(study, 2)
    assert sum(t.state.name == "FAIL" for t in study.get_trials()) <= 1  # at most the one in flight
