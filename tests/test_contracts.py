"""The decision protocol (envs/protocol.py) is the contract between backends and the rest.

* The protocol module imports nothing else from the project (it is the bottom layer).
* The simulator implements the protocols: `Backend` and `ClusterView`, its instances
  `InstanceView`, their block managers `KVView`, its requests `RequestView`.
* Observations and heuristics read a backend only through those views: a vLLM-free fake
  holding *only* the protocols' members (slotted, so any other read raises) gives the same
  observation, mask and heuristic answers as the simulator it mirrors, decision by decision.
* The observation layout is pinned (a change must bump `OBS_LAYOUT_VERSION`).
* The env, the observation encoder and the agents handle decision kinds by their
  `KindSpec` (protocol.KIND_SPECS), never by name: a new kind needs no edit there.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import servegym  # noqa: F401  (registers the ids)
from servegym.agents.heuristics import make_policy
from servegym.envs import protocol
from servegym.envs.observations import (
    GLOBAL_FEATURES,
    OBS_LAYOUT_VERSION,
    SLOT_FEATURES,
    ObservationEncoder,
)
from servegym.envs.protocol import (
    Backend,
    ClusterView,
    DecisionKind,
    InstanceView,
    KVView,
    RequestView,
)

ROOT = Path(__file__).resolve().parents[1]


def members(view: type) -> list[str]:
    """Public attributes and methods a protocol class declares."""
    names = set(getattr(view, "__annotations__", {}))
    names |= {name for name, value in vars(view).items()
              if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    return sorted(names)


def test_the_protocol_module_imports_nothing_from_the_project() -> None:
    tree = ast.parse((ROOT / "envs" / "protocol.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module]
    assert not [name for name in imported if name.split(".")[0] in ("envs", "agents")]


# The only kind names the RL side may spell out: the observation's kind one-hot (pinned
# by layout 3) and the admission-interval env, which is about ADMIT by definition.
NAMED_KINDS_ALLOWED = {
    "envs/observations.py": {"ROUTE", "ADMIT", "PREEMPT"},
    "envs/interval_env.py": {"ADMIT"},
}
RL_SIDE = ("envs/serving_env.py", "envs/observations.py", "envs/interval_env.py",
           "envs/rewards.py", "agents/__init__.py", "agents/learned.py", "agents/training.py",
           "agents/learners.py", "agents/evaluation.py", "agents/callbacks.py",
           "agents/scorer_policy.py", "agents/config.py", "train.py")


def test_every_kind_has_a_spec_and_a_config_name() -> None:
    from servegym.agents.learned import KIND_ORDER, KINDS
    from servegym.envs.serving_env import CONTROLS
    for kind in DecisionKind:
        assert kind.spec.candidates in protocol.CANDIDATE_SETS, kind
        assert DecisionKind.from_control(kind.control) is kind
    assert set(CONTROLS.values()) == set(KINDS.values()) == set(DecisionKind)
    assert tuple(DecisionKind) == KIND_ORDER
    with pytest.raises(ValueError, match="unknown decision kind 'migrat'"):
        DecisionKind.from_control("migrat")


def test_every_kind_names_its_default_policy_in_its_spec() -> None:
    """`default_policies` builds what each `KindSpec.default` names, in kind order, so a new
    kind brings its default in its own module and edits no list of defaults."""
    from servegym.envs.core.decisions import default_policies, default_policy_class

    defaults = default_policies()
    assert list(defaults) == list(DecisionKind)
    for kind, policy in defaults.items():
        module, _, name = kind.spec.default.partition(":")
        assert type(policy).__name__ == name and type(policy).__module__ == module
        assert type(policy) is default_policy_class(kind) and callable(policy.decide)
    assert default_policies()[DecisionKind.ADMIT] is not defaults[DecisionKind.ADMIT]


def test_a_kind_without_a_default_is_named_in_the_error(monkeypatch) -> None:
    from servegym.envs.core import decisions

    broken = dict(protocol.KIND_SPECS)
    broken[DecisionKind.PLACE] = broken[DecisionKind.PLACE]._replace(default="")
    monkeypatch.setattr(protocol, "KIND_SPECS", broken)
    with pytest.raises(ValueError, match="DecisionKind.PLACE has no default policy"):
        decisions.default_policies()


@pytest.mark.parametrize("path", RL_SIDE)
def test_the_rl_side_names_no_decision_kind(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    named = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Name) and node.value.id == "DecisionKind"
             and node.attr.isupper()}
    extra = named - NAMED_KINDS_ALLOWED.get(path, set())
    assert not extra, (f"{path} names DecisionKind.{sorted(extra)}: read the kind's "
                       "KindSpec (envs/protocol.py KIND_SPECS) instead")


def test_the_observation_layout_is_pinned() -> None:
    # Bump OBS_LAYOUT_VERSION (saved agents of another layout are refused) when these move.
    assert (OBS_LAYOUT_VERSION, GLOBAL_FEATURES, SLOT_FEATURES) == (4, 16, 23)


def serving_sim(env_id: str = "servegym/Serving-v0") -> Any:
    env = gym.make(env_id, rate=30.0, episode_requests=200).unwrapped
    env.reset(seed=4)
    return env


def test_the_simulator_implements_the_protocols() -> None:
    env = serving_sim()
    sim = env.sim
    assert isinstance(sim, Backend) and isinstance(sim, ClusterView)
    for instance in sim.instances:
        assert isinstance(instance, InstanceView) and isinstance(instance.bm, KVView)
    assert sim.requests and all(isinstance(r, RequestView) for r in sim.requests)


def test_the_live_backend_classes_define_every_protocol_method() -> None:
    """The live backend's conformance test needs vLLM (tests/live); this vLLM-free check
    catches a protocol method added without its live counterpart in the main suite."""
    from servegym.envs.backends.live.backend import LiveBackend, LiveBlocks, LiveInstance

    for live, view in ((LiveBackend, Backend), (LiveBackend, ClusterView),
                       (LiveInstance, InstanceView), (LiveBlocks, KVView)):
        methods = [name for name in members(view) if callable(vars(view).get(name))]
        missing = [name for name in methods if not callable(getattr(live, name, None))]
        assert not missing, f"{live.__name__} lacks {view.__name__} methods {missing}"


# ------------------------------------------------------------------ a vLLM-free fake
def slotted(view: type, source: Any, overrides: dict[str, Any]) -> Any:
    """An object holding exactly `view`'s members, copied (or bound) from `source`."""
    names = members(view)
    cls = type(f"Fake{view.__name__}", (), {"__slots__": tuple(names)})
    fake = cls()
    for name in names:
        value = overrides[name] if name in overrides else getattr(source, name)
        object.__setattr__(fake, name, value)
    return fake


class FakeCluster:
    """A backend state made only of protocol members: what a second backend must offer."""

    def __init__(self, sim: Any) -> None:
        requests = {r.rid: slotted(RequestView, r, {}) for r in sim.requests}
        self.requests = [requests[r.rid] for r in sim.requests]
        self.cluster = slotted(ClusterView, sim, {"requests": self.requests,
                                                  "instances": [], "departed": []})
        self.cluster.departed.extend(requests[r.rid] for r in sim.departed)
        for instance in sim.instances:
            bm = slotted(KVView, instance.bm, {
                "num_free": instance.bm.num_free, "num_used": instance.bm.num_used,
                "count_prefix_hits": self._on_real(instance.bm.count_prefix_hits),
                "can_swap_out": self._on_real(instance.bm.can_swap_out)})
            fake = slotted(InstanceView, instance, {
                "bm": bm, "sim": self.cluster,
                **{queue: [requests[r.rid] for r in getattr(instance, queue)]
                   for queue in ("waiting", "running", "swapped")},
                "batch": list(instance.batch),
                "can_admit": self._on_real(instance.can_admit),
                "can_receive": self._on_real(instance.can_receive)})
            self.cluster.instances.append(fake)
        self.by_rid = {r.rid: r for r in sim.requests}

    def _on_real(self, method: Any) -> Any:
        """A method of the real backend, given fake requests (looked up by rid)."""
        def call(*args: Any) -> Any:
            return method(*(self.by_rid[a.rid] if hasattr(a, "rid") else a for a in args))
        return call

    def decision(self, real: Any) -> Any:
        """`real` (a decision of the simulator) restated over the fake."""
        fakes = {r.rid: r for r in self.requests}
        instance = None
        if real.instance is not None:
            instance = self.cluster.instances[real.instance.index]
        sets = real.kind.spec.candidates
        if sets == "instances":
            candidates = [self.cluster.instances[c.index] for c in real.candidates]
        elif sets == "options":
            candidates = list(real.candidates)  # numbers (RETAIN's TTL menu)
        else:
            candidates = [fakes[r.rid] for r in real.candidates]
        request = fakes[real.request.rid] if real.request is not None else None
        return protocol.Decision(real.kind, real.time, candidates, instance, request,
                                 self.cluster if real.cluster is not None else None)


HEURISTICS = {DecisionKind.ADMIT: ["spf", "fcfs", "edf-late-last", "sjf-oracle", "vtc",
                                   "program-las", "critical-path-first"],
              DecisionKind.PREEMPT: ["preempt-least-progress", "preempt-most-blocks",
                                     "swap-cost-aware"],
              DecisionKind.ROUTE: ["jsq", "lor", "llumnix", "prefix-affinity", "min-ttft",
                                   "least-prefill"],
              DecisionKind.PLACE: ["place-most-free-kv", "place-least-running",
                                   "place-first-fit"],
              DecisionKind.MIGRATE: ["migrate-never", "migrate-balance", "migrate-defrag",
                                     "migrate-priority-headroom"],
              DecisionKind.RETAIN: ["retain-lru", "retain-none", "retain-continuum",
                                    "retain-continuum-unbounded", "retain-oracle",
                                    "retain-oracle-bounded"]}


# Each id with the kinds its first 300 decisions must include (PREEMPT is rare there).
K = DecisionKind
READ_ONLY_CASES = [("servegym/Serving-v0", {K.ADMIT, K.ROUTE}),
                   ("servegym/Routing-v0", {K.ROUTE}),
                   ("servegym/Disaggregated-v0", {K.ROUTE, K.PLACE}),
                   ("servegym/Migration-v0", {K.MIGRATE}),
                   ("servegym/Sessions-v0", {K.RETAIN})]


@pytest.mark.parametrize(("env_id", "kinds"), READ_ONLY_CASES)
def test_observations_and_heuristics_read_only_the_protocol(env_id: str,
                                                            kinds: set[DecisionKind]) -> None:
    env = serving_sim(env_id)
    encoder: ObservationEncoder = env.encoder
    fake_encoder = ObservationEncoder(encoder.num_slots, encoder.default_ttft_slo,
                                      encoder.rate_scale, encoder.output_estimate,
                                      encoder.admit_keys, encoder.preempt_keys)
    fake_encoder.episode_requests = encoder.episode_requests
    rng = np.random.default_rng(0)
    seen: set[DecisionKind] = set()
    for _ in range(300):
        decision = env.decision
        if decision is None:
            break
        fake = FakeCluster(env.sim)
        restated = fake.decision(decision)
        expected = encoder.encode(decision, env.sim)
        np.testing.assert_array_equal(fake_encoder.encode(restated, fake.cluster), expected)
        np.testing.assert_array_equal(fake_encoder.mask, encoder.mask)
        for name in HEURISTICS[decision.kind]:
            policy, twin = make_policy(name), make_policy(name)
            for p in (policy, twin):
                if hasattr(p, "reset"):
                    p.reset(np.random.default_rng(1))
            answer = decision.validate(policy.decide(decision))
            assert restated.validate(twin.decide(restated)) == answer, name
        seen.add(decision.kind)
        env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
    assert seen >= kinds  # those kinds were restated over the fake and compared



# ============================================================================ import name
def test_servegym_is_the_only_import_name_and_registers_the_ids() -> None:
    import subprocess
    import sys

    code = ("import sys, gymnasium as gym\n"
            "env = gym.make('servegym:servegym/Admission-v0')\n"
            "env.reset(seed=0)\n"
            "import servegym.agents.training, servegym.agents.heuristics, servegym.envs.build\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'envs', 'agents'}))\n")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                          text=True, check=True, cwd="/")
    assert done.stdout.strip() == "[]"


# envs/core/disagg.py is not among them: it holds PLACE's default policy, which every
# simulator builds.
TOPOLOGY_MODULES = ("servegym.envs.core.migration",
                    "servegym.envs.core.retention", "servegym.envs.workloads.mooncake",
                    "servegym.envs.workloads.servegen", "servegym.envs.workloads.programs")


def test_a_mixed_cluster_on_one_trace_loads_no_topology_or_other_loader_code() -> None:
    """The modules a run does not use stay unimported (docs/architecture.md; the memory
    bench_core_change measures), and each loads once its cluster option or source asks."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, warnings\n"
            "warnings.simplefilter('ignore')\n"
            "from servegym.envs.core.simulator import Simulator\n"
            "from servegym.envs.costs import build_cost_model\n"
            "from servegym.envs.workloads import build_workload\n"
            "cost = build_cost_model('Llama-3-8B', 'H100-80GB', 1, source='roofline')\n"
            "w = build_workload({'kind': 'azure'}, num_requests=200, max_total_tokens=8192)\n"
            "Simulator(cost, num_instances=2).run(w, seed=0)\n"
            f"print(json.dumps([m for m in {TOPOLOGY_MODULES!r} if m in sys.modules]))\n"
            "Simulator(cost, num_instances=2, migration={'interval_s': 0.5}).run(w, seed=0)\n"
            "from servegym.envs.workloads import load_mooncake\n"
            f"print(json.dumps([m for m in {TOPOLOGY_MODULES!r} if m in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd="/")
    assert done.returncode == 0, done.stderr
    plain, later = done.stdout.splitlines()
    assert json.loads(plain) == []
    assert {"servegym.envs.core.migration", "servegym.envs.workloads.mooncake"} <= \
        set(json.loads(later))


def test_the_workload_package_names_its_lazy_loaders() -> None:
    import servegym.envs.workloads as workloads

    assert set(workloads.__all__) <= set(dir(workloads))
    assert callable(workloads.load_mooncake) and workloads.SERVEGEN_POOLS
    with pytest.raises(AttributeError, match="no attribute 'load_nothing'"):
        _ = workloads.load_nothing


def test_pyproject_lists_every_package_folder() -> None:
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    folders = {"servegym"} | {
        "servegym." + ".".join(init.parent.relative_to(root).parts)
        for top in ("envs", "agents") for init in (root / top).rglob("__init__.py")}
    assert listed == folders


def test_old_module_paths_load_with_a_deprecation_warning() -> None:
    import importlib
    import sys

    from servegym.agents.agent_files import legacy_module_names
    from servegym.agents.config import upgrade_module_paths

    saved = {"workload": {"_target_": "envs.workloads.build_workload", "rate": 2.0},
             "cost": {"_target_": "servegym.envs.costs.build_cost_model"}}
    with pytest.warns(DeprecationWarning, match="envs.workloads.build_workload"):
        upgraded = upgrade_module_paths(saved)
    assert upgraded["workload"] == {"_target_": "servegym.envs.workloads.build_workload",
                                    "rate": 2.0}
    assert upgraded["cost"] == saved["cost"]
    with pytest.warns(DeprecationWarning, match="pre-0.2 modules"), \
            legacy_module_names("an old agent"):
        import servegym.agents.scorer_policy as current

        assert importlib.import_module("agents.scorer_policy") is current
    assert "agents.scorer_policy" not in sys.modules and "agents" not in sys.modules
