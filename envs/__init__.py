"""servegym environments: importing `envs` registers the Gymnasium ids.

    servegym/Admission-v0   the agent admits waiting requests into each batch (or STOPs)
    servegym/Preemption-v0  the agent picks preemption victims (and recompute vs swap)
    servegym/Routing-v0     the agent routes arriving requests over 4 instances
    servegym/Serving-v0     all three; the observation says which decision is asked
"""

from gymnasium.envs.registration import register, registry

ENTRY_POINT = "envs.serving_env:ServingEnv"
MAX_EPISODE_STEPS = 100_000

_IDS = {
    "servegym/Admission-v0": {"control": ("admit",)},
    "servegym/Preemption-v0": {
        "control": ("preempt",),
        # KV pressure makes preemption decisions frequent: a smaller KV pool, swap enabled.
        "cluster": {"num_instances": 1,
                    "instance": {"num_kv_blocks": 2048, "swap_space_blocks": 4096}},
        "rate": 20.0,
    },
    "servegym/Routing-v0": {"control": ("route",), "cluster": {"num_instances": 4},
                            "rate": 60.0},
    "servegym/Serving-v0": {
        "control": ("admit", "preempt", "route"),
        "cluster": {"num_instances": 2,
                    "instance": {"num_kv_blocks": 4096, "swap_space_blocks": 4096}},
        "rate": 30.0,
    },
}

for _id, _kwargs in _IDS.items():
    if _id not in registry:
        # The passive checker wraps every step; the full checkers run in CI instead
        # (tests/test_envs.py runs Gymnasium's and SB3's check_env on every id).
        register(id=_id, entry_point=ENTRY_POINT, kwargs=_kwargs,
                 max_episode_steps=MAX_EPISODE_STEPS, disable_env_checker=True)
