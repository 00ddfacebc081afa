"""`rubik search run` as a function: create or join a study and run its trials in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import RubikError


def run_study(study: str, *, base: str = "efficientnet_b0", base_resolution: int = 0, data: str = "digits",
              budget: Sequence[float] = (0.5,), trials: int = 50, epochs: int = 10,
              r_range: Sequence[float] = (0.4, 1.0), d_range: Sequence[float] = (0.4, 1.4), references: bool = False,
              seed: int = 0, recipe: str = "small", batch_size: int = 64, lr: float | None = None,
              set: list[str] | dict | None = None, latency: bool = False, out: str | Path | None = None,
              workers: int | None = None, threads: int = 0, heartbeat: int = 10, storage: str | None = None,
              storage_wait: float = 120, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Join the study `study` (or create it with these settings and its plan of `trials` trials) and run
    trials until the plan is done; rerun to resume. Returns {"study", "completed", "summary"}."""
    import torch

    from ..train.data import class_count
    from ..train.recipes import parse_overrides
    from .front import summary
    from .study import SearchSettings, base_spec, create_or_join, open_storage, run_worker, settings_of, training_config

    say = log or (lambda line: None)
    if heartbeat < 1:
        raise RubikError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    if threads:
        torch.set_num_threads(threads)
    overrides = parse_overrides(set) if isinstance(set, list) else dict(set or {})
    if lr is not None:
        overrides["lr"] = lr
    settings = SearchSettings(base=base, base_resolution=base_resolution, budgets=list(budget), r_range=list(r_range),
                              d_range=list(d_range), epochs=epochs, seed=seed, recipe=recipe, batch_size=batch_size,
                              overrides=overrides, references=references, data=data, latency=latency)
    settings.num_classes = class_count(data)  # budgets count the head the trials train
    training_config(settings, base_spec(settings), data, workers)  # bad --set keys fail before any trial
    store = open_storage(storage, heartbeat)
    joined = create_or_join(study, settings, trials, store)
    out = Path(out) if out else Path("runs") / "search" / study
    say(f"study {study} in {store.url}: {len(joined.trials)} trials recorded; trial runs under {out}")
    done = run_worker(joined, settings_of(joined), data, out, workers=workers, log=say, storage_wait=storage_wait,
                      progress=None)
    return {"study": study, "completed": sum(o.state == "COMPLETE" for o in done), "summary": summary(joined)}
