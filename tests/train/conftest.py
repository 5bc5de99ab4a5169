import pytest


@pytest.fixture(scope="session")
def default_warmup(tmp_path_factory):
    """The default warm-up (``salt.train.sft`` defaults, tracking off), trained once per test session and
    shared by ``test_sft.py`` and ``test_learning.py``: (model dir, its metrics)."""
    from salt.train.sft import run_sft

    out = tmp_path_factory.mktemp("default_warmup")
    metrics = run_sft({"tracking": {"enabled": False}}, out)
    return out / "final", metrics
