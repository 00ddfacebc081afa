import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, so key mix-ups show in outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture
def randomize_bn():
    return randomize_batchnorm


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on localhost for this test session (tests/pg_server.py), stopped at the end.

    Skips where the server binaries are absent; under CI (CI=true) that fails instead, since .ci/run installs them.
    """
    from pg_server import PostgresServer, missing_reason

    reason = missing_reason()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
        pytest.skip(reason)
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]' (or .[postgres])")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
