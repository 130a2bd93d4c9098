"""Live-engine tests: real vLLM (the `live` extra). Run with `make test-live`.

Without vLLM installed (the default `.venv`), nothing here is collected, so `make test`
is unchanged. Every test here carries the `live` marker.
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: needs a real vLLM engine (the `live` extra)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/live/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.live)


@pytest.fixture(scope="session")
def live_backend():
    """Two small in-process engines (started once: ~10 s each)."""
    from servegym.envs.backends.live.backend import LiveBackend, live_instance_config

    backend = LiveBackend(live_instance_config({"num_kv_blocks": 64}), num_instances=2)
    backend.build_engines()
    yield backend
    backend.close()
