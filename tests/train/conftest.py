import pytest


@pytest.fixture(scope="session")
def default_warmup(tmp_path_factory):
    """The default warm-up (``salt.train.sft`` defaults, tracking off), trained once per test session (only
    ``test_learning.py`` uses it: ``make test`` gives each file to one pytest-xdist worker): (model dir, its metrics)."""
    from salt.train.sft import run_sft

    out = tmp_path_factory.mktemp("default_warmup")
    metrics = run_sft({"tracking": {"enabled": False}}, out)
    return out / "final", metrics
