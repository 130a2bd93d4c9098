"""servegym environments (`servegym.envs`, the `envs/` folder); importing `servegym`
registers the Gymnasium ids.

    servegym/Admission-v0   the agent admits waiting requests into each batch (or STOPs)
    servegym/Preemption-v0  the agent picks preemption victims (and recompute vs swap)
    servegym/Routing-v0     the agent routes arriving requests over 4 instances
    servegym/Serving-v0     all three; the observation says which decision is asked
    servegym/AdmissionInterval-v0  admission by priority weights set once per interval
    servegym/Heterogeneous-v0  routing over a heterogeneous cluster (1 H100, 2 A100, 3 L40S
                            pools serving Llama-2-7B; Mélange's mixed chat + documents load)
    servegym/Disaggregated-v0  prefill/decode disaggregation (DistServe): the agent routes
                            arrivals among 2 prefill instances and places each prefilled
                            request on one of 2 decode instances (its KV moves there)
    servegym/Migration-v0   live migration (Llumnix): every 0.1 s the agent moves nothing
                            or one decoding request of the least free of 4 KV-bound
                            instances (round-robin dispatch, a bursty load) elsewhere

Each id's complete setting is its task in `envs/tasks.py` (`TASKS`), registered with every
setting as a keyword argument: `gymnasium.make(id)` builds what `python train.py env=<name>`
trains on (tests/test_headroom.py). Programs composing `conf/` register the OmegaConf
resolver ``${servegym.task:<id>,<path>}`` through which the Hydra configs read those
settings (`servegym.envs.tasks.register_resolver`; `servegym.agents.config.register_configs`
does it), so `import servegym` does not import OmegaConf (the simulator's memory stays as it was).
"""

from gymnasium.envs.registration import register, registry

from servegym.envs.tasks import TASKS

MAX_EPISODE_STEPS = 100_000

for _task in TASKS.values():
    if _task.id not in registry:
        # The passive checker wraps every step; the full checkers run in CI instead
        # (tests/test_envs.py runs Gymnasium's and SB3's check_env on every id).
        register(id=_task.id, entry_point=_task.entry_point, kwargs=_task.make_kwargs(),
                 max_episode_steps=MAX_EPISODE_STEPS, disable_env_checker=True)

