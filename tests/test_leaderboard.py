"""The leaderboard's aggregation: headline rows, best heuristic, verdicts, no cherry-picking."""

from __future__ import annotations

import json
from pathlib import Path

import leaderboard
import pytest


def job(folder: Path, task: str, algo: str, seed: int, agent: float, sampled: float,
        heuristics: dict[str, float]) -> None:
    rows = {"agent": agent, "agent-best-sampled": sampled, "agent-last-greedy": agent - 1,
            "agent-last-sampled": sampled - 1, **heuristics}
    metrics = {
        "seed": seed, "overrides": [f"seed={seed}"], "command": f"python train.py seed={seed}",
        "config": {"env": {"id": task}, "agent": {"algo": algo, "total_timesteps": 10},
                   "eval": {"deterministic": True}},
        "eval": {"policies": {k: {"serving/goodput_rps": v, "serving/slo_attainment": v / 20}
                              for k, v in rows.items()}},
    }
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("{}")
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_verdicts_use_the_headline_row_and_the_best_heuristic(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for seed in (0, 1, 2):
        # The sampled row is far better, but the headline is the greedy best checkpoint.
        job(sweep / f"a{seed}", "T-win", "maskable_ppo", seed, 11.0 + 0.1 * seed, 30.0,
            {"fcfs": 5.0, "spf": 10.0})
        job(sweep / f"b{seed}", "T-lose", "ppo", seed, 8.0, 30.0, {"fcfs": 5.0, "spf": 10.0})
    payload = leaderboard.aggregate([sweep], tmp_path / "out", "test")
    win, lose = payload["tasks"]["T-win"], payload["tasks"]["T-lose"]
    assert win["best_heuristic"] == "spf" and win["heuristic_spread"] == pytest.approx(0.5)
    assert win["headline_agents"] == ["maskable_ppo (best, greedy)"]
    gap = win["rows"]["maskable_ppo (best, greedy)"]["vs_best_heuristic"]
    assert gap == pytest.approx(0.11) and leaderboard.verdict(gap) == "wins"
    assert leaderboard.verdict(lose["rows"]["ppo (best, greedy)"]["vs_best_heuristic"]) == "loses"
    assert leaderboard.verdict(0.01) == "ties"
    text = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| T-lose | ppo (best, greedy) | 8.00 [8.00, 8.00] |" in text and "loses" in text
    assert (tmp_path / "out" / "leaderboard.png").is_file()
    assert len(list((tmp_path / "out" / "history").glob("leaderboard_*.md"))) == 1


def test_heuristic_only_jobs_add_rows_and_must_agree(tmp_path: Path) -> None:
    sweep, extra = tmp_path / "sweep", tmp_path / "extra"
    for seed in (0, 1):
        job(sweep / f"a{seed}", "T", "ppo", seed, 10.5, 9.0, {"fcfs": 5.0, "spf": 10.0})
        # a later heuristic-only job: its "agent" rows are the heuristic itself, not an agent
        job(extra / f"h{seed}", "T", "heuristic", seed, 11.0, 11.0,
            {"spf": 10.0, "new-rule": 11.0})
    payload = leaderboard.aggregate([sweep, extra], tmp_path / "out", "test")
    task = payload["tasks"]["T"]
    assert task["best_heuristic"] == "new-rule"
    assert task["headline_agents"] == ["ppo (best, greedy)"]
    assert not any(label.startswith("heuristic (") for label in task["rows"])
    assert task["rows"]["ppo (best, greedy)"]["vs_best_heuristic"] == pytest.approx(
        10.5 / 11.0 - 1)
    # spf scored differently in the two runs: different windows, so no merged table
    job(tmp_path / "bad" / "h0", "T", "heuristic", 0, 11.0, 11.0, {"spf": 9.0})
    with pytest.raises(ValueError, match="different windows or code"):
        leaderboard.aggregate([sweep, tmp_path / "bad"], tmp_path / "out2", "test")


def test_the_plot_says_what_its_whiskers_are_and_clips_them_at_zero(tmp_path: Path) -> None:
    from servegym.agents.plots import caption_text, plt

    sweep = tmp_path / "sweep"
    for seed, value in ((0, 0.2), (1, 3.0), (2, 0.1)):  # a CI reaching below 0
        job(sweep / f"a{seed}", "T", "ppo", seed, value, value, {"spf": value + 1})
    payload = leaderboard.aggregate([sweep], tmp_path / "out", "test")
    figure = leaderboard.leaderboard_figure(payload["tasks"])
    caption = caption_text(figure)
    assert "95% t CI over seeds, clipped at 0" in caption and "seeds 0, 1, 2" in caption
    axes = figure.axes[0]
    assert axes.get_ylim()[0] == 0
    for line in axes.lines + [c for coll in axes.collections for c in coll.get_segments()]:
        ys = line.get_ydata() if hasattr(line, "get_ydata") else [p[1] for p in line]
        assert min(ys) >= 0
    plt.close(figure)
    # a re-aggregation (even within the same second) replaces the latest table and plot
    # and adds a history entry beside the first
    leaderboard.aggregate([sweep], tmp_path / "out", "test")
    assert len(list((tmp_path / "out" / "history").glob("leaderboard_*.md"))) == 2


def test_the_job_store_remakes_the_table_without_the_job_folders(tmp_path: Path) -> None:
    import shutil

    sweep = tmp_path / "sweep"
    for seed in (0, 1, 2):
        job(sweep / f"a{seed}", "T", "maskable_ppo", seed, 10.0 + seed, 9.0,
            {"fcfs": 5.0, "spf": 10.0 + 0.5 * seed})
    first = leaderboard.aggregate([sweep], tmp_path / "out", "test")
    store = tmp_path / "out" / "leaderboard_jobs.json"
    kept = tmp_path / "kept.json"
    shutil.copy(store, kept)
    shutil.rmtree(sweep)  # the folders are gone (a fresh clone): the store remakes the table
    again = leaderboard.aggregate([kept], tmp_path / "out2", "test")
    assert again["tasks"] == first["tasks"]
    assert "python train.py seed=0" in (tmp_path / "out2" / "leaderboard.md").read_text()
    # and new jobs join the stored ones (the heuristics must agree, as for folders)
    extra = tmp_path / "extra"
    for seed in (0, 1, 2):
        job(extra / f"p{seed}", "T", "ppo", seed, 7.0, 7.0, {"spf": 10.0 + 0.5 * seed})
    both = leaderboard.aggregate([kept, extra], tmp_path / "out3", "test")
    assert {"maskable_ppo (best, greedy)", "ppo (best, greedy)"} <= set(both["tasks"]["T"]["rows"])
    with pytest.raises(SystemExit, match="not a leaderboard job store"):
        leaderboard.aggregate([tmp_path / "out" / "leaderboard.json"], tmp_path / "o4", "t")


def test_a_re_run_job_replaces_the_stored_one_and_is_named(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for seed in (0, 1):
        job(old / f"a{seed}", "T", "maskable_ppo", seed, 9.0, 9.0, {"spf": 10.0})
        job(old / f"p{seed}", "T", "ppo", seed, 8.0, 8.0, {"spf": 10.0})
    leaderboard.aggregate([old], tmp_path / "out", "test")
    store = tmp_path / "out" / "leaderboard_jobs.json"
    job(new / "a0", "T", "maskable_ppo", 0, 12.0, 12.0, {"spf": 10.0})  # seed 0 again
    both = leaderboard.aggregate([store, new], tmp_path / "out2", "test")
    row = both["tasks"]["T"]["rows"]["maskable_ppo (best, greedy)"]
    assert row["seeds"] == [0, 1]
    assert row["goodput_rps"][0] == pytest.approx((12.0 + 9.0) / 2)  # seed 0 from the re-run
    assert both["tasks"]["T"]["rows"]["ppo (best, greedy)"]["goodput_rps"][0] == 8.0
    text = (tmp_path / "out2" / "leaderboard.md").read_text()
    assert "Superseded by a later job of the same task, agent and seed (1): T maskable_ppo " \
        f"seed 0: {old / 'a0'} by {new / 'a0'}" in text
    stored = json.loads((tmp_path / "out2" / "leaderboard_jobs.json").read_text())["jobs"]
    assert len(stored) == 4  # the replaced job is not stored again


def test_carried_tasks_keep_their_summaries_and_are_named(tmp_path: Path) -> None:
    old = tmp_path / "old"
    for seed in (0, 1):
        job(old / f"a{seed}", "Old", "ppo", seed, 3.0, 3.0, {"spf": 4.0})
        job(old / f"b{seed}", "T", "ppo", seed, 1.0, 1.0, {"spf": 4.0})
    earlier = leaderboard.aggregate([old], tmp_path / "out", "test")
    new = tmp_path / "new"
    for seed in (0, 1):
        job(new / f"b{seed}", "T", "ppo", seed, 5.0, 5.0, {"spf": 4.0})
    payload = leaderboard.aggregate([new], tmp_path / "out2", "test",
                                    carry_from=tmp_path / "out" / "leaderboard.json")
    carried = payload["tasks"]["Old"]
    assert carried["rows"] == json.loads(json.dumps(earlier["tasks"]["Old"]["rows"]))
    assert carried["carried_from"] == earlier["created"]
    # the new jobs' task replaces the earlier one's (not carried)
    assert "carried_from" not in payload["tasks"]["T"]
    assert payload["tasks"]["T"]["rows"]["ppo (best, greedy)"]["goodput_rps"][0] == 5.0
    text = (tmp_path / "out2" / "leaderboard.md").read_text()
    assert f"Carried from the leaderboard of {earlier['created']}" in text and ": Old." in text


def test_an_evolved_agent_has_its_own_rows(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        job(sweep / f"a{seed}", "T", "maskable_ppo", seed, 10.0, 10.0, {"spf": 10.0})
        job(sweep / f"e{seed}", "T", "maskable_ppo", seed, 11.0, 11.0, {"spf": 10.0})
        path = sweep / f"e{seed}" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["config"]["agent"]["evolution"] = {"iterations": 3}
        path.write_text(json.dumps(metrics))
    payload = leaderboard.aggregate([sweep], tmp_path / "out", "test")
    task = payload["tasks"]["T"]
    assert task["headline_agents"] == ["maskable_ppo (best, greedy)",
                                       "maskable_ppo+es (best, greedy)"]
    assert task["rows"]["maskable_ppo+es (best, greedy)"]["goodput_rps"][0] == 11.0
    again = leaderboard.aggregate([tmp_path / "out" / "leaderboard_jobs.json"],
                                  tmp_path / "out2", "test")
    assert again["tasks"]["T"]["headline_agents"] == task["headline_agents"]


def test_carried_agent_rows_need_identical_heuristics(tmp_path: Path) -> None:
    old = tmp_path / "old"
    for seed in (0, 1):
        job(old / f"a{seed}", "T", "ppo", seed, 9.0, 9.0, {"spf": 10.0})
    leaderboard.aggregate([old], tmp_path / "out", "test")
    earlier = tmp_path / "out" / "leaderboard.json"
    same, other = tmp_path / "same", tmp_path / "other"
    for seed in (0, 1):
        job(same / f"e{seed}", "T", "maskable_ppo", seed, 12.0, 12.0, {"spf": 10.0})
        job(other / f"e{seed}", "T", "maskable_ppo", seed, 12.0, 12.0, {"spf": 11.0})
    merged = leaderboard.aggregate([same], tmp_path / "o2", "test", carry_from=earlier)
    task = merged["tasks"]["T"]
    assert task["rows"]["ppo (best, greedy)"]["vs_best_heuristic"] == pytest.approx(-0.1)
    assert "ppo (best, greedy)" in task["headline_agents"]
    assert "rows ppo (best, greedy)" in (tmp_path / "o2" / "leaderboard.md").read_text()
    refused = leaderboard.aggregate([other], tmp_path / "o3", "test", carry_from=earlier)
    assert "ppo (best, greedy)" not in refused["tasks"]["T"]["rows"]
    assert "scored ['spf'] differently" in refused["tasks"]["T"]["carry_refused"]
