"""servegym: a gym where reinforcement-learning agents learn to schedule LLM serving.

The project's one import name. The folders of the repository map under it (the build
configuration in pyproject.toml): `envs/` is `servegym.envs` (the simulator, cost models,
workloads, backends and the Gymnasium envs), `agents/` is `servegym.agents` (heuristics,
learned policies, training and evaluation). Importing `servegym` registers the Gymnasium
ids, so both of these work in a fresh interpreter:

    >>> import gymnasium as gym
    >>> env = gym.make("servegym:servegym/Admission-v0")    # Gymnasium imports servegym
    >>> import servegym; env = gym.make("servegym/Admission-v0")

Saved configs and agents that name the old top-level modules (`envs.*`, `agents.*`,
before servegym 0.2) still load, with a DeprecationWarning, for one release
(`servegym.agents.config.upgrade_module_paths`).
"""

from servegym import envs as envs  # registers the Gymnasium ids

__version__ = "0.2.0"
__all__ = ["__version__", "envs"]
