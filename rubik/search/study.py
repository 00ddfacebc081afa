"""The Rubik search on Optuna: a planned set of (c, r, d) trials, each trained briefly, in a shared storage.

How a study is laid out
- Creating a study enqueues its plan: trial k gets budget c = budgets[k % len(budgets)] and (r, d)
  from a scrambled Sobol sequence over the r and d ranges (one sequence per budget, seeded), so the
  points are spread evenly and the same seed gives the same points on any machine. Width is not
  sampled: it is solved on the built model so MACs = c x base MACs (within 1 %), as in the paper's
  Fig. 2. With `references`, each budget also gets the tiny-formula and inverse-giant models.
- Workers pop WAITING trials atomically (the storage's WAITING -> RUNNING check-and-set), so any
  number of processes or machines on one storage share the plan without duplicates.
- `--trials` counts planned trials. A study is finished when no trial is WAITING or RUNNING; each
  planned trial then has one COMPLETE trial, or FAIL trials that say why in `fail_reason`.
- A worker that dies leaves its trial RUNNING; its heartbeat stops, and after the grace period the
  next worker marks it FAIL (it stays in the study, recorded) and Optuna's retry callback enqueues
  a copy with the same parameters. Interrupted (Ctrl-C) and crashed trials are retried the same
  way; diverged (NaN loss) and infeasible trials are not, as a retry would fail the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import RubikError

DEFAULT_STORAGE = "sqlite:///runs/search/studies.db"
SETTINGS_ATTR = "rubik_search"  # study user attribute holding the settings; set last, so it marks "ready"
DIRECTIONS = ["maximize", "minimize"]  # validation top-1 %, MACs in millions
MAX_RETRY = 2  # copies of a trial whose worker died or crashed
MIN_TRAIN_RESOLUTION = 16  # the trainer's floor
STORAGE_WAIT_S = 120.0  # how long a worker retries a storage that stopped answering (a database restart)


@dataclass
class SearchSettings:
    """What a study is: everything a trial's result depends on (not the number of trials or the data path)."""

    base: str = "efficientnet_b0"
    base_resolution: int = 0  # 0 = the base model's own
    budgets: list[float] = field(default_factory=lambda: [0.5])
    r_range: list[float] = field(default_factory=lambda: [0.4, 1.0])
    d_range: list[float] = field(default_factory=lambda: [0.4, 1.4])
    epochs: int = 10
    seed: int = 0
    recipe: str = "small"
    batch_size: int = 64
    overrides: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields (--set)
    references: bool = False
    data: str = "digits"  # recorded for provenance; workers may see the data at different paths
    latency: bool = False
    # The classifier the budgets count: the data's class count (a 1000-way head is 1.3 M MACs, a tenth of
    # B0 at 64 px, so counting ImageNet's head on CIFAR-10 would mislabel every c). Studies made before
    # this field counted 1000 classes, which is what the default keeps for them.
    num_classes: int = 1000

    IDENTITY = ("base", "base_resolution", "budgets", "r_range", "d_range", "epochs", "seed", "recipe",
                "batch_size", "overrides", "references", "num_classes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        if not self.budgets:
            raise RubikError("give at least one budget, e.g. --budget 0.5 or --budget 0.5 0.25 0.125")
        for c in self.budgets:
            if not 0 < c <= 1:
                raise RubikError(f"budget {c:g} is not a MACs ratio to the base; give values in (0, 1], e.g. 0.25")
        if len(set(self.budgets)) != len(self.budgets):
            raise RubikError(f"budgets {self.budgets} repeat a value; give each budget once")
        for name, (lo, hi) in (("r", self.r_range), ("d", self.d_range)):
            if not 0 < lo <= hi:
                raise RubikError(f"--{name}-range {lo:g} {hi:g} must be two positive numbers, low first")
        if self.epochs < 1:
            raise RubikError(f"--epochs must be at least 1, got {self.epochs}")

    def mismatch(self, other: SearchSettings) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [f"{k} {b[k]!r} (study has {a[k]!r})" for k in self.IDENTITY if a[k] != b[k]]


# ---- storage -------------------------------------------------------------------------------------


def open_storage(url: str | None = None, heartbeat: int = 10):
    """An Optuna RDB storage with heartbeats; SQLite gets a long lock timeout for concurrent workers."""
    import optuna
    import sqlalchemy.exc

    url = url or DEFAULT_STORAGE
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:  # a database server that restarted leaves dead pooled connections: test each before use
        engine_kwargs = {"pool_pre_ping": True}
    hint = "give an SQLAlchemy URL such as sqlite:///runs/search/studies.db or postgresql://user:pass@host/db"
    check_driver(url, hint)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=4 * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY))
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
            raise RubikError(f"bad storage URL {url!r} ({str(e).splitlines()[0]}); {hint}") from None
        except ImportError:
            raise RubikError(f"storage URL {url!r} needs a database driver that could not be imported; "
                             "install the package for it or use sqlite") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Two processes creating the tables of a fresh database at once (SQLite: a lock, or both inserting
            # the schema version row; PostgreSQL: both creating a table's type, "duplicate key value" or
            # "already exists"): the loser waits and retries, and then finds the tables made. Elsewhere a
            # server that does not answer (OperationalError) is an error at once.
            schema_race = url.startswith("sqlite") or (
                not isinstance(e, sqlalchemy.exc.OperationalError)
                and any(s in str(e.orig).lower() for s in ("duplicate key", "already exists")))
            if attempt == 4 or not schema_race:
                raise RubikError(f"cannot open storage {url!r} ({str(e.orig).splitlines()[0]}); {hint}") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


# The package that provides each DB-API module SQLAlchemy's dialects import (SQLAlchemy 2.1 maps a plain
# postgresql:// to psycopg 3, not psycopg2).
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary] (pip install 'rubik-nets[postgres]')",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}


def check_driver(url: str, hint: str = "") -> None:
    """Import the DB-API module the URL's dialect uses; a missing one is named with the package providing it.

    Optuna replaces the ImportError with a generic one, so the module is looked up here first.
    """
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        dialect = sqlalchemy.engine.make_url(url).get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise RubikError(f"bad storage URL {url!r} ({str(e).splitlines()[0]}); {hint}") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        module = (e.name or "").split(".")[0] or dialect.driver
        package = DRIVER_PACKAGES.get(module, f"the package that provides the Python module {module!r}")
        raise RubikError(f"storage URL {url!r} needs the Python module {module!r} ({dialect.name} driver "
                         f"{dialect.driver!r}), which is not installed; install {package}, "
                         "or use a sqlite:/// URL") from None


class StorageLost(RubikError):
    """The storage stopped answering for longer than the worker waits."""


def _connection_error(e: BaseException) -> BaseException | None:
    """The database's connection-level error behind `e` (Optuna wraps SQLAlchemy's), or None for others."""
    import sqlalchemy.exc

    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return err
    return None


def with_storage(fn: Callable[[], Any], what: str, url: str, wait_s: float = STORAGE_WAIT_S,
                 log: Callable[[str], None] = print) -> Any:
    """fn(), retried while the database is unreachable (a restart), for up to wait_s; then a one-line error."""
    deadline = None
    while True:
        try:
            result = fn()
        except Exception as e:  # Optuna's StorageInternalError, or SQLAlchemy's own
            err = _connection_error(e)
            if err is None:
                raise
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            now = time.monotonic()
            if deadline is None:
                deadline = now + wait_s
                log(f"storage not answering while {what} ({reason}); retrying for up to {wait_s:.0f} s")
            if now >= deadline:
                from .front import _public_url

                raise StorageLost(f"lost the storage {_public_url(url)} while {what}: no answer for {wait_s:.0f} s "
                                  f"({reason}); when the database is back, rerun the same command (a trial this "
                                  "worker was running is then retried)") from None
            time.sleep(min(2.0, deadline - now))
            continue
        if deadline is not None:
            log(f"storage answering again; {what}")
        return result


def study_names(storage) -> list[str]:
    import optuna

    return sorted(optuna.study.get_all_study_names(storage))


def load_study(name: str, storage):
    """An existing study, or a one-line error listing the studies the storage holds."""
    import optuna

    names = study_names(storage)
    if name not in names:
        have = ", ".join(names) if names else "none"
        raise RubikError(f"no study named {name!r} in {storage.url} (studies there: {have}); "
                         "check --study/--storage or start it with `rubik search run`")
    return optuna.load_study(study_name=name, storage=storage)


def settings_of(study) -> SearchSettings:
    data = study.user_attrs.get(SETTINGS_ATTR)
    if data is None:
        raise RubikError(f"study {study.study_name!r} was not made by `rubik search` (no settings recorded)")
    return SearchSettings.from_dict(data)


# ---- the plan ------------------------------------------------------------------------------------


def base_spec(settings: SearchSettings):
    """The base model, at the study's base resolution."""
    from ..models import FAMILIES, get_spec

    base = get_spec(settings.base)
    if not FAMILIES[base.family].twistable:
        twistable = sorted(n for n, f in FAMILIES.items() if f.twistable)
        raise RubikError(f"{base.name} ({base.family}) has no cube to search; bases of the families "
                         f"{', '.join(twistable)} can be searched")
    res = settings.base_resolution or base.resolution
    return replace(base, resolution=res)


def sobol_points(seed: int, stream: int, count: int) -> list[tuple[float, float]]:
    """The first `count` points of a scrambled Sobol sequence in [0, 1)^2; a prefix never changes."""
    import numpy as np
    from scipy.stats import qmc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # balance properties want powers of two; prefixes suffice
        sobol = qmc.Sobol(d=2, scramble=True, rng=np.random.default_rng([seed, stream]))
        return [(float(u), float(v)) for u, v in sobol.random(count)]


def plan(settings: SearchSettings, trials: int) -> list[dict[str, Any]]:
    """The study's trials in order: params (c, r, d) and user attributes (plan index, kind)."""
    (r_lo, r_hi), (d_lo, d_hi) = settings.r_range, settings.d_range
    n_budgets = len(settings.budgets)
    per_budget = {i: sobol_points(settings.seed, i, (trials + n_budgets - 1) // n_budgets) for i in range(n_budgets)}
    out = []
    for k in range(trials):
        i, j = k % n_budgets, k // n_budgets
        u, v = per_budget[i][j]
        out.append({"params": {"c": settings.budgets[i], "r": r_lo + u * (r_hi - r_lo),
                               "d": d_lo + v * (d_hi - d_lo)}, "user_attrs": {"plan_index": k, "kind": "sobol"}})
    if settings.references:
        from ..cube.giant import giant, phi_for_ratio

        tiny = formula_rules_twister(settings)
        for i, c in enumerate(settings.budgets):
            p = tiny.formula.predict(c)
            r_g, d_g, _ = giant(phi_for_ratio(c))
            for n, (kind, r, d) in enumerate((("tiny", p.r, p.d), ("giant", r_g, d_g))):
                out.append({"params": {"c": c, "r": r, "d": d},
                            "user_attrs": {"plan_index": -1 - 2 * i - n, "kind": kind}})
    return out


def formula_rules_twister(settings: SearchSettings):
    from ..cube.twist import Twister

    return Twister(base_spec(settings), "tiny")


def twisted_spec(settings: SearchSettings, c: float, r: float, d: float, kind: str = "sobol"):
    """The model for one trial: resolution and depth from (r, d), width solved for c x base MACs.

    Searched points use the tiny formula's scaling rules (depth rounding, fixed stem), so that the
    fitted formula and `rubik twist` build the same models; inverse-giant references keep the base's.
    """
    from ..cube.solve import macs_of, solve

    base = base_spec(settings)
    rules = base.rules if kind == "giant" else formula_rules_twister(settings).twist_rules()
    resolution = max(MIN_TRAIN_RESOLUTION, round(base.resolution * r))
    start = replace(base, name=f"{base.name}_c{c:g}_r{r:.3f}_d{d:.3f}", resolution=resolution,
                    depth=base.depth * d, rules=rules)
    base_macs = macs_of(base, settings.num_classes)
    spec, macs = solve(start, c * base_macs, num_classes=settings.num_classes)
    return base, spec, macs, base_macs


def check_budgets(settings: SearchSettings) -> None:
    """Every budget must be reachable from the smallest (r, d) of the ranges at the narrowest width."""
    from ..cube.solve import WIDTH_RANGE, macs_of

    base = base_spec(settings)
    rules = formula_rules_twister(settings).twist_rules()
    r_lo, d_lo = settings.r_range[0], settings.d_range[0]
    smallest = replace(base, resolution=max(MIN_TRAIN_RESOLUTION, round(base.resolution * r_lo)),
                       depth=base.depth * d_lo, width=WIDTH_RANGE[0], rules=rules)
    floor = macs_of(smallest, settings.num_classes) / macs_of(base, settings.num_classes)
    low = [c for c in settings.budgets if c < floor]
    if low:
        raise RubikError(f"budget {min(low):g} is outside what {base.name} at {base.resolution} px can be shrunk to "
                         f"with r >= {r_lo:g} and d >= {d_lo:g}: the narrowest such model is {floor:.3f} x the base's "
                         "MACs; raise the budget, lower --r-range/--d-range, or raise --base-resolution")


# ---- creating and joining a study -----------------------------------------------------------------


def create_or_join(name: str, settings: SearchSettings, trials: int, storage, wait_s: float = 120.0):
    """Create the study and enqueue its plan, or join it (checking settings, topping up the plan)."""
    import optuna

    settings.validate()
    if trials < 1:
        raise RubikError(f"--trials must be at least 1, got {trials}")
    check_budgets(settings)  # a bad base or an unreachable budget fails here, before anything is stored
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS,
                                    sampler=optuna.samplers.RandomSampler(seed=settings.seed))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    if created:
        _enqueue(study, plan(settings, trials))
        study.set_user_attr("trials", trials)
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())  # last: other workers wait for it
        return study
    deadline = time.monotonic() + wait_s
    while SETTINGS_ATTR not in study.user_attrs:  # another worker is creating it right now
        if time.monotonic() > deadline:
            raise RubikError(f"study {name!r} exists but has no search settings after {wait_s:.0f} s; it was not "
                             "made by `rubik search` or its creator died while planning: use another --study")
        time.sleep(0.5)
    have = settings_of(study)
    diff = have.mismatch(settings)
    if diff:
        raise RubikError(f"study {name!r} was created with other settings: {'; '.join(diff)}; rerun with the "
                         "study's settings or choose a new --study name")
    planned = int(study.user_attrs.get("trials", 0))
    if trials > planned:  # top up: the plan's prefix is unchanged, so only new indices are added
        new = [p for p in plan(settings, trials) if planned <= p["user_attrs"]["plan_index"] < trials]
        _enqueue(study, new)
        study.set_user_attr("trials", trials)
    return study


def _enqueue(study, items: list[dict[str, Any]]) -> None:
    for item in items:
        study.enqueue_trial(item["params"], user_attrs=item["user_attrs"], skip_if_exists=False)


# ---- running trials --------------------------------------------------------------------------------


@dataclass
class TrialOutcome:
    number: int
    state: str  # "COMPLETE" | "FAIL"
    params: dict[str, float]
    attrs: dict[str, Any]


TrainFn = Callable[..., dict[str, Any]]


def _default_train(config, run_dir, progress=False):
    from ..tasks import make_task
    from ..train.trainer import train

    return train(config, run_dir, make_task(config), progress=progress)


@contextlib.contextmanager
def heartbeat(storage, trial_id: int):
    """Record the trial's heartbeat every interval until the block ends (Optuna's stale-trial detection)."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval()

    def beat():
        while True:
            with contextlib.suppress(Exception):  # a busy database must not kill the trial; a later beat will do
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _storage_of(study):
    return study._storage  # the study's own (cached) view of the storage, the one ask() and tell() use


def _pop_waiting(study) -> int | None:
    """Claim a WAITING trial: the storage's WAITING -> RUNNING update succeeds for exactly one worker."""
    import optuna
    import sqlalchemy.exc
    from optuna.trial import TrialState

    storage = _storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        # The first heartbeat goes before the claim: Optuna never counts a RUNNING trial without any heartbeat
        # as stale, so a worker killed between claiming and its heartbeat thread's first beat would leave a
        # trial that every later worker waits for forever. A loser of the race only refreshes the winner's beat.
        with contextlib.suppress(sqlalchemy.exc.IntegrityError):  # two first beats at once: one row is enough
            storage.record_heartbeat(t._trial_id)
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _fail_stale(study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def training_config(settings: SearchSettings, spec, data: str, workers: int | None = None):
    from ..tasks import task_for_model
    from ..train.recipes import build_config

    values = {**settings.overrides, "model": spec.to_dict(), "data": data, "epochs": settings.epochs,
              "seed": settings.seed, "resolution": spec.resolution, "batch_size": settings.batch_size,
              "recipe": settings.recipe}
    if workers is not None:
        values["num_workers"] = workers
    return build_config(data_defaults=task_for_model(spec).data_defaults(data), cli_values=values)


def run_worker(study, settings: SearchSettings, data: str, out_dir: str | Path,
               train_fn: TrainFn | None = None, workers: int | None = None,
               log: Callable[[str], None] = print, storage_wait: float = STORAGE_WAIT_S,
               progress: bool | None = False) -> list[TrialOutcome]:
    """Run planned trials until none is waiting or running; returns what this worker did.

    progress: each trial's training bar (None: on a terminal only; the trial lines are printed anyway).

    While the database does not answer (a restart), every storage call is retried for up to
    `storage_wait` seconds; after that the worker stops with StorageLost (a one-line error).
    """
    import optuna
    from optuna.trial import TrialState

    train_fn = train_fn or _default_train
    storage = _storage_of(study)
    url = getattr(storage, "_backend", storage).url
    db = functools.partial(with_storage, url=url, wait_s=storage_wait, log=log)
    out_dir = Path(out_dir)
    done: list[TrialOutcome] = []
    waiting_note = False

    def poll():
        _fail_stale(study)
        trial_id = _pop_waiting(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if trial_id is None else []
        return trial_id, running

    while True:
        trial_id, running = db(poll, "looking for the next trial")
        if trial_id is None:
            if not running:
                return done
            if not waiting_note:  # a dead worker's trial is retried once its heartbeat goes stale
                log(f"waiting for {len(running)} running trial(s) (trial {', '.join(str(t.number) for t in running)})"
                    f" to finish or go stale")
                waiting_note = True
            time.sleep(storage.get_heartbeat_interval())
            continue
        waiting_note = False
        trial = optuna.Trial(study, trial_id)
        with heartbeat(storage, trial_id):
            done.append(_run_trial(study, trial, settings, data, out_dir, train_fn, workers, log, db, progress))


def _draw_point(trial, settings: SearchSettings, db: Callable[..., Any]) -> tuple[float, str, float, float]:
    """Sign the trial with this worker and draw its budget c, r and d (a planned trial's are fixed already)."""

    def start():
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        c = trial.suggest_categorical("c", settings.budgets)
        kind = trial.user_attrs.get("kind", "sobol")
        # References sit wherever their formula puts them, possibly outside the search ranges.
        r_range = settings.r_range if kind == "sobol" else (0.01, 4.0)
        d_range = settings.d_range if kind == "sobol" else (0.01, 4.0)
        return c, kind, trial.suggest_float("r", *r_range), trial.suggest_float("d", *d_range)

    return db(start, f"starting trial {trial.number}")


def _record_failure(study, trial, reason: str, retry: bool, db: Callable[..., Any]) -> None:
    """Mark the trial failed with `reason`; with `retry`, queue it again (Optuna's retry, at most MAX_RETRY)."""
    import optuna
    from optuna.trial import TrialState

    def record():
        frozen = _storage_of(study).get_trial(trial._trial_id)  # before the reason is set: the copy starts clean
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        if retry:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY)(study, frozen)

    try:
        db(record, f"recording trial {trial.number} as failed")
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another worker marked it stale meanwhile; its retry copy exists already


def _trial_results(settings: SearchSettings, spec, summary: dict[str, Any], seconds: float) -> dict[str, float]:
    """What a finished trial records: its best top-1 and top-5, training time and (if asked) latency."""
    results = {"top1": float(summary["best"]["top1"]), "top5": float(summary["best"].get("top5", 0.0)),
               "train_seconds": seconds}
    if settings.latency:
        from ..models import build
        from ..profile import latency

        results["latency_ms"] = latency(build(spec).eval(), spec.resolution, threads=1, runs=30)
    return results


def _run_trial(study, trial, settings: SearchSettings, data: str, out_dir: Path, train_fn: TrainFn,
               workers: int | None, log: Callable[[str], None],
               db: Callable[..., Any] = lambda fn, what: fn(), progress: bool | None = False) -> TrialOutcome:
    import optuna

    from ..cube.solve import InfeasibleBudget
    from ..train.trainer import NonFiniteLossError

    c, kind, r, d = _draw_point(trial, settings, db)
    label = f"trial {trial.number} [{kind} c={c:g} r={r:.3f} d={d:.3f}"

    def fail(reason: str, retry: bool) -> TrialOutcome:
        _record_failure(study, trial, reason, retry, db)
        log(f"{label}]: FAILED ({reason})" + ("; queued again" if retry else ""))
        return TrialOutcome(trial.number, "FAIL", dict(trial.params), {"fail_reason": reason})

    try:
        base, spec, macs, base_macs = twisted_spec(settings, c, r, d, kind)
    except InfeasibleBudget as e:
        return fail(f"infeasible: {e}", retry=False)
    attrs = {"resolution": spec.resolution, "r_actual": spec.resolution / base.resolution,
             "w": spec.width / base.width, "macs": macs, "macs_ratio": macs / base_macs, "base_macs": base_macs,
             "spec": spec.to_dict()}
    label += f" w={attrs['w']:.3f} {spec.resolution}px {macs / 1e6:.2f}M MACs"
    run_dir = out_dir / f"trial-{trial.number:04d}"

    def describe():
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("run_dir", str(run_dir))

    db(describe, f"starting trial {trial.number}")
    t0 = time.perf_counter()
    try:
        config = training_config(settings, spec, data, workers)
        log(f"{label}]: training {settings.epochs} epoch(s) in {run_dir}")
        summary = train_fn(config, run_dir, progress=progress)
    except NonFiniteLossError as e:
        return fail(f"diverged: {str(e).split(';')[0]}", retry=False)
    except KeyboardInterrupt:
        fail("interrupted", retry=True)
        raise
    except Exception as e:  # recorded and retried, then the worker stops: a broken setup must not eat the plan
        fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", retry=True)
        raise RubikError(f"trial {trial.number} failed ({type(e).__name__}: {e}); it is recorded as failed and "
                         "queued again: fix the cause and rerun the same command") from e
    results = _trial_results(settings, spec, summary, time.perf_counter() - t0)

    def finish():
        for k, v in results.items():
            trial.set_user_attr(k, v)
        study.tell(trial, [results["top1"], macs / 1e6])

    try:
        db(finish, f"saving trial {trial.number}'s result")
    except optuna.exceptions.UpdateFinishedTrialError:
        # Marked failed by another worker (heartbeats were late); its retry copy will redo it.
        log(f"{label}]: finished, but another worker had already marked it stale; its retry counts instead")
        return TrialOutcome(trial.number, "FAIL", dict(trial.params), {"fail_reason": "stale"})
    log(f"{label}]: top-1 {results['top1']:.2f}% in {results['train_seconds']:.0f} s")
    return TrialOutcome(trial.number, "COMPLETE", dict(trial.params), {**attrs, "top1": results["top1"]})
