"""The plots a reader can read alone (issue 18, item 7): captions naming the setting and
the whiskers, whiskers and bands clipped at 0, readable ticks, a labelled twin axis with one
legend, shortened override labels. Checked on the matplotlib objects, not on pixels."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml

from servegym.agents import plots
from servegym.agents.evaluation import TABLE_METRICS

CONFIG = {
    "seed": 3,
    "env": {"id": "servegym/Admission-v0", "rate": 4.0},
    "eval": {"rate": None},
    "workload": {"source": {"kind": "azure", "trace": "conv"}, "name": None},
    "cost": {"model": "Llama-3-8B", "gpu": "H100-80GB", "tensor_parallel": 1},
}


def _rows(policies: tuple[str, ...] = ("agent", "fcfs"), seeds: tuple[int, ...] = (0, 1)
          ) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"policy": p, "seed": s, **{m: float(rng.uniform(0.1, 2.0))
                                        for m, _, _, _ in TABLE_METRICS}}
            for p in policies for s in seeds]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_config_caption_names_model_gpu_trace_rate_and_seeds() -> None:
    text = plots.config_caption(CONFIG, seeds=[1, 0, 1])
    for part in ("Llama-3-8B", "H100-80GB", "trace azure conv", "4 req/s", "seeds 0, 1",
                 "servegym/Admission-v0"):
        assert part in text, (part, text)
    assert "seed 3" in plots.config_caption(CONFIG)
    assert "TP2" in plots.config_caption({**CONFIG, "cost": {**CONFIG["cost"],
                                                              "tensor_parallel": 2}})
    assert "trace rate" in plots.config_caption({**CONFIG, "env": {}})


def test_comparison_caption_from_the_run_folder_and_whiskers_explained(tmp_path: Path) -> None:
    (tmp_path / "resolved_config.yaml").write_text(yaml.safe_dump(CONFIG))
    assert plots.run_caption(tmp_path) == plots.config_caption(CONFIG)
    assert plots.run_caption(tmp_path / "missing") is None
    path = plots.plot_comparison(tmp_path / "comparison.png", _rows())
    assert path.read_bytes()[:4] == b"\x89PNG"
    figure = plots.comparison_figure(_rows(), caption=plots.run_caption(tmp_path))
    text = plots.caption_text(figure)
    assert "Llama-3-8B on H100-80GB" in text and "trace azure conv" in text
    assert "minimum to maximum over the windows" in text and "2 evaluation window" in text
    # the whiskers are the min and max of each policy's windows
    rows = _rows()
    metric = TABLE_METRICS[0][0]
    agent = [r[metric] for r in rows if r["policy"] == "agent"]
    low, high = plots.whisker_ranges(figure)[0][0]
    assert low == pytest.approx(min(agent)) and high == pytest.approx(max(agent))


def test_summary_whiskers_are_the_ci_clipped_at_zero() -> None:
    table = {"agent": {"serving/ttft_p99": (0.2, -0.3, 0.7)},   # 2 seeds: CI below 0 s
             "fcfs": {"serving/ttft_p99": (1.0, 0.5, 1.5)},
             "sjf": {"serving/ttft_p99": (0.8, float("nan"), float("nan"))}}  # one seed
    figure = plots.summary_figure(table, [("serving/ttft_p99", "TTFT p99 (s)", 1.0)],
                                  caption="model X on Y", seeds=[0, 1])
    ranges = plots.whisker_ranges(figure)[0]
    assert ranges[0].tolist() == pytest.approx([0.0, 0.7])     # clipped, top kept
    assert ranges[1].tolist() == pytest.approx([0.5, 1.5])
    assert ranges[2].tolist() == pytest.approx([0.8, 0.8])     # no whisker for one seed
    assert ranges.min() >= 0 and figure.axes[0].get_xlim()[0] == 0
    text = plots.caption_text(figure)
    assert text.startswith("model X on Y")
    assert "95% confidence interval" in text and "clipped at 0" in text and "over 2 seeds" in text


def test_short_labels_keep_what_differs() -> None:
    labels = ["agent [agent.ent_coef=0.0123456789,agent.learning_rate=0.000312345,env=admission]",
              "agent [agent.ent_coef=0.05,agent.learning_rate=0.0001,env=admission]",
              "fcfs"]
    short = plots.short_labels(labels)
    assert short[2] == "fcfs"
    flat = [s.replace("\n", " ") for s in short]
    assert flat[0] == "agent [ent_coef=0.0123, learning_rate=0.000312]"
    assert "env=" not in flat[1] and "agent." not in flat[1]
    assert all(len(line) <= plots.LABEL_WIDTH for s in short for line in s.split("\n"))
    # cutting the keys would make two labels equal: the keys stay whole
    clash = plots.short_labels(["agent [a.lr=1,b.lr=2]", "agent [a.lr=2,b.lr=1]"])
    assert len(set(clash)) == 2 and "a.lr" in clash[0].replace("\n", "")


def test_training_ticks_twin_axis_and_caption(tmp_path: Path) -> None:
    steps = np.arange(1, 41) * 25_000
    csv = tmp_path / "progress.csv"
    csv.write_text("time/total_timesteps,rollout/ep_rew_mean,rollout/e2e_mean\n" + "".join(
        f"{s},{i * 0.1},{2.0 - i * 0.01}\n" for i, s in enumerate(steps)))
    periodic = [{"timesteps": float(s), "serving/slo_attainment": 0.5 + i * 0.01,
                 "serving/e2e_mean": 3.0 - i * 0.05} for i, s in enumerate(steps[::5])]
    figure = plots.training_figure(csv, periodic, caption="model X on Y")
    figure.canvas.draw()
    left, middle, right, twin = figure.axes
    for ax in (left, middle, right):
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert 2 <= len(labels) <= 7 and any(label.endswith(("k", "M")) for label in labels)
    assert twin.get_ylabel() == "E2E mean (s)" and right.get_ylabel() == "SLO attainment"
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert legend == ["SLO attainment (left)", "E2E mean, s (right)"]
    assert plots.caption_text(figure).startswith("model X on Y")
    assert "last 100 training episodes" in plots.caption_text(figure)
    path = tmp_path / "training.png"
    assert plots.plot_training(path, csv, periodic).read_bytes()[:4] == b"\x89PNG"


def test_eval_plots_band_clipped_and_named() -> None:
    from eval_plots import latency_cdf_figure, vs_rate_figure

    means = {"fcfs": {1.0: (0.1, -0.2, 0.4), 2.0: (0.5, 0.2, 0.9)},
             "sjf": {1.0: (0.2, 0.1, 0.3), 2.0: (0.3, 0.2, 0.4)}}
    figure = vs_rate_figure(means, ["fcfs", "sjf"], "SLO attainment", target=0.9,
                            caption="tiny on 1 x M / G TP1 · seeds 0, 1", seeds=2)
    axes = figure.axes[0]
    band = next(c for c in axes.collections if c.get_gid() == "band:fcfs")
    assert band.get_paths()[0].vertices[:, 1].min() == 0.0     # -0.2 clipped
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert "shaded: min-max over 2 seeds" in legend and "target 90%" in legend
    text = plots.caption_text(figure)
    assert text.startswith("tiny on 1 x M / G TP1") and "clipped at 0" in text
    cdf = latency_cdf_figure({"fcfs": {"ttft": np.array([0.1, 0.2]), "tbt": np.array([0.01]),
                                       "e2e": np.array([1.0])}}, ["fcfs"], 2.0,
                             caption="tiny", seed=0)
    assert "seed 0" in cdf._suptitle.get_text() and "no band" in plots.caption_text(cdf)


def test_aggregate_passes_the_setting_caption(tmp_path: Path, monkeypatch) -> None:
    """aggregate.py captions summary.png with the jobs' setting and seeds (fake jobs)."""
    import json

    import aggregate

    sweep = tmp_path / "sweep"
    for job, seed in enumerate((0, 1)):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text("{}\n")
        means = {m: 0.5 + seed for m, _, _, _ in aggregate.METRICS}
        (folder / "metrics.json").write_text(json.dumps({
            "name": "t", "seed": seed, "overrides": [f"seed={seed}"], "setting": [],
            "command": f"python train.py seed={seed}",
            "train": {}, "config": {**CONFIG, "seed": seed},
            "eval": {"episodes": 1, "requests": 8, "split": "test",
                     "policies": {"agent": means, "fcfs": means}}}))
    seen = {}
    monkeypatch.setattr(plots, "plot_summary", lambda *a, **k: seen.update(k))
    aggregate.aggregate([sweep], tmp_path / "out")
    assert seen["seeds"] == [0, 1]
    assert seen["caption"] == plots.config_caption({**CONFIG, "seed": 0}, seeds=[0, 1])
    assert "Llama-3-8B on H100-80GB" in seen["caption"] and "seeds 0, 1" in seen["caption"]
