"""Long-context serving by servegym's cost model, beside Fu's theoretical peak analysis.

Fu, "Challenges in Deploying Long-Context Transformers: A Theoretical Peak Performance
Analysis" (arXiv 2405.08944, 2024) takes a 34B model (Yi-34B-200K: 60 layers, hidden 7168,
56 query / 8 KV heads) at 50K tokens of context on A100 80GB and shows that the KV cache
bounds how many users fit, that prefill time grows with context, and that decoding reads
the KV cache on every step. This script computes the same quantities with servegym:

1. The paper's setting, one A100-80GB, 4K and 50K: KV per sequence, concurrent sequences,
   prefill of one sequence, decoding 250 tokens alone, each two ways: under the paper's
   assumptions (all 80 GiB of HBM for weights + KV, 100 % of peak FLOP/s and HBM bandwidth,
   one unchunked prefill pass) and under servegym's defaults (gpu_memory_utilization 0.9
   and an activation reserve; roofline at 60 % of peak FLOP/s and 80 % of HBM bandwidth,
   1 ms per iteration, prefill in 8,192-token chunks).
2. 4 x A100-80GB (TP4), contexts 4K..200K: KV bytes per token, KV per sequence, sequences
   that fit by KV after the weights, prefill of one sequence, the decode step with that
   many sequences running, decode tokens/s and a request-throughput bound
   (1 / (prefill + 250 decode steps shared by the running batch)). No measured table has
   Yi's shape, so these are roofline numbers.
3. Llama-3.1-70B on 4 x A100 (TP4): measured (the Llama-3-70B tables, measured to 32,768
   batched tokens and 4,096 tokens of attention context) against the roofline, to 128K.
4. A simulated run at 50K: 40 requests of 50,000 prompt + 250 output tokens, all at t=0, on
   one TP4 instance: the running batch peaks at the KV bound, far below max_num_seqs.

Writes ``results/<name>.md`` and ``.json`` (never overwriting):

    python experiments/long_context.py
    python experiments/long_context.py --name long_context_2
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.metrics import atomic_write, format_summary, result_paths
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs.base import CostModel
from servegym.envs.costs.factory import build_cost_model
from servegym.envs.costs.roofline import RooflineCostModel
from servegym.envs.costs.specs import (
    GiB,
    default_activation_reserve_bytes,
    get_gpu,
    get_model,
    kv_bound_sequences,
    kv_bytes_per_token_per_gpu,
    kv_capacity_blocks,
)
from servegym.envs.costs.table_model import BeyondMeasuredRangeWarning
from servegym.envs.workloads.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
MODEL, GPU = "Yi-34B-200K", "A100-80GB"
OUTPUT_TOKENS = 250
CHUNK = 8192  # InstanceConfig's default max_num_batched_tokens
BLOCK = 16
CONTEXTS = (4096, 8192, 16384, 32768, 50_000, 100_000, 200_000)
LLAMA_CONTEXTS = (4096, 32768, 131072)
PAPER_SOURCE = (
    "the figures below are those a secondary summary of arXiv 2405.08944 reports "
    "(app.argminai.com/arxiv-dashboard/papers/2405.08944v1: prefilling ~14.1 s vs 0.89 s "
    "at 4K, decoding ~9.8 s vs 8.5 s, concurrency ~20 users at 4K -> 1 at 50K on one 80GB "
    "A100); the paper's own text could not be retrieved here, so none is quoted verbatim, "
    "and the output length behind the decoding figures is not stated there (250 tokens "
    "reproduces 8.5 s: 250 reads of 68 GB at 2 TB/s)")
PAPER = {4096: {"concurrency": 20, "prefill_s": 0.89, "decode_250_s": 8.5},
         50_000: {"concurrency": 1, "prefill_s": 14.1, "decode_250_s": 9.8}}


def prefill_time(cost: CostModel, prompt: int, chunk: int) -> float:
    """Seconds to prefill one ``prompt``-token sequence alone in chunks of ``chunk``."""
    total, done = 0.0, 0
    while done < prompt:
        new = min(chunk, prompt - done)
        total += cost.iteration_time([(new, done)], 0, 0)
        done += new
    return total


def decode_alone(cost: CostModel, context: int, steps: int = OUTPUT_TOKENS) -> float:
    """Seconds of ``steps`` decode steps of one sequence after a ``context``-token prompt."""
    return sum(cost.iteration_time([], 1, context + k) for k in range(1, steps + 1))


def paper_accounting_concurrency(model: str, gpu: str, tp: int, tokens: int) -> int:
    """The paper's accounting: all HBM of the group minus the weights, no reserve."""
    m, g = get_model(model), get_gpu(gpu)
    free = tp * g.memory_bytes - m.weight_bytes
    return max(0, math.floor(free / (tokens * m.kv_bytes_per_token)))


def paper_setting() -> list[dict[str, Any]]:
    peak = RooflineCostModel(MODEL, GPU, 1, compute_efficiency=1.0, memory_efficiency=1.0,
                             iteration_overhead_s=0.0)
    default = RooflineCostModel(MODEL, GPU, 1)
    m = get_model(MODEL)
    rows = []
    for context in (4096, 50_000):
        blocks = kv_capacity_blocks(m, GPU, 1)
        rows.append({
            "context": context,
            "kv_per_seq_gb": context * m.kv_bytes_per_token / 1e9,
            "paper": PAPER[context],
            "peak": {"concurrency": paper_accounting_concurrency(MODEL, GPU, 1, context),
                     "prefill_s": peak.iteration_time([(context, 0)], 0, 0),
                     "decode_250_s": decode_alone(peak, context)},
            "servegym": {"concurrency": kv_bound_sequences(blocks, context, BLOCK),
                         "prefill_s": prefill_time(default, context, CHUNK),
                         "decode_250_s": decode_alone(default, context)},
        })
    return rows


def sweep(cost: CostModel, model: str, tp: int, contexts: tuple[int, ...]) -> list[dict]:
    m = get_model(model)
    blocks = kv_capacity_blocks(m, GPU, tp)
    rows = []
    for context in contexts:
        n = kv_bound_sequences(blocks, context + OUTPUT_TOKENS, BLOCK)
        prefill = prefill_time(cost, context, CHUNK)
        step = cost.iteration_time([], n, n * (context + OUTPUT_TOKENS)) if n else math.nan
        rows.append({
            "context": context,
            "kv_bytes_per_token": m.kv_bytes_per_token,
            "kv_bytes_per_token_per_gpu": kv_bytes_per_token_per_gpu(m, tp),
            "kv_per_seq_gb": context * m.kv_bytes_per_token / 1e9,
            "kv_blocks": blocks,
            "max_seqs_by_kv": n,
            "max_seqs_paper_accounting": paper_accounting_concurrency(
                model, GPU, tp, context + OUTPUT_TOKENS),
            "prefill_s": prefill,
            "decode_step_ms": 1e3 * step,
            "decode_tokens_per_s": n / step if n else 0.0,
            # GPU time per request: its prefill alone, plus its share of 250 decode steps.
            "requests_per_s_bound": (1.0 / (prefill + OUTPUT_TOKENS * step / n)
                                     if n else 0.0),
        })
    return rows


def llama_measured_vs_roofline() -> dict[str, Any]:
    model, tp = "Llama-3.1-70B", 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BeyondMeasuredRangeWarning)
        measured = build_cost_model(model, GPU, tp, source="measured")
        measured_rows = sweep(measured, model, tp, LLAMA_CONTEXTS)
    notes = [str(w.message) for w in caught if w.category is BeyondMeasuredRangeWarning]
    roofline_rows = sweep(build_cost_model(model, GPU, tp, source="roofline"), model, tp,
                          LLAMA_CONTEXTS)
    d = measured.describe()
    return {"model": model, "tensor_parallel": tp, "tables_model": d["tables_model"],
            "scaled_from": d["scaled_from"], "measured_up_to": d["measured_up_to"],
            "notice": notes, "measured": measured_rows, "roofline": roofline_rows,
            "llama31_8b_tp1_kv_bound_128k": kv_bound_sequences(
                kv_capacity_blocks("Llama-3.1-8B", GPU, 1), 131072, BLOCK)}


def simulated_run(requests: int, seed: int) -> dict[str, Any]:
    cost = build_cost_model(MODEL, GPU, 4, source="roofline")
    prompt = 50_000
    workload = Workload.from_lengths(np.zeros(requests), np.full(requests, prompt),
                                     np.full(requests, OUTPUT_TOKENS))
    config = InstanceConfig()
    sim = Simulator(cost, config)
    started = time.perf_counter()
    report = sim.run(workload, seed=seed)
    wall = time.perf_counter() - started
    r, s = report.records, report.summary
    start, finish = r["first_scheduled"], r["finish"]
    running = [int(((start <= t) & (finish > t)).sum()) for t in start]
    return {"requests": requests, "prompt": prompt, "output": OUTPUT_TOKENS,
            "kv_blocks": sim.num_kv_blocks, "max_num_seqs": config.max_num_seqs,
            # Admission reserves the prompt's blocks (vLLM), decode grows into the rest.
            "kv_bound_prompt": kv_bound_sequences(sim.num_kv_blocks, prompt, BLOCK),
            "kv_bound_full": kv_bound_sequences(sim.num_kv_blocks, prompt + OUTPUT_TOKENS,
                                                BLOCK),
            "peak_running": max(running), "preemptions": s["serving/preemptions"],
            "throughput_rps": s["serving/throughput_rps"], "ttft_p50_s": s["serving/ttft_p50"],
            "tpot_p50_s": s["serving/tpot_p50"], "wall_s": wall,
            "summary_table": format_summary(s, source=report.cost_source)}


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:,.{digits}f}"


def render(result: dict[str, Any]) -> str:
    p, tp4, ll, simr = (result["paper_setting"], result["tp4"], result["llama"],
                        result["simulated"])
    m = get_model(MODEL)
    lines = [
        "# Long-context serving: servegym beside Fu (2024)", "",
        f"Command: `{result['command']}` at commit {result['commit']}. Model {MODEL} "
        f"({m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} query / "
        f"{m.num_kv_heads} KV heads, {m.num_params / 1e9:.1f}B parameters = "
        f"{m.weight_bytes / 1e9:.1f} GB in bf16) on {GPU} (312 TFLOP/s, 2.039 TB/s, 80 GiB).",
        "", "Paper: Fu, \"Challenges in Deploying Long-Context Transformers: A Theoretical Peak "
        "Performance Analysis\", arXiv 2405.08944 (2024). Source of its figures: "
        + PAPER_SOURCE + ".", "",
        "## 1. The paper's setting: one A100-80GB", "",
        "KV of one sequence = 2 (K, V) x 60 layers x 8 KV heads x 128 x 2 bytes = "
        f"{m.kv_bytes_per_token:,} bytes per token.", "",
        "| context | KV / seq (GB) | users: paper | users: peak accounting | users: servegym "
        "| prefill s: paper | prefill s: peak | prefill s: servegym | decode 250 s: paper "
        "| decode 250 s: peak | decode 250 s: servegym |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in p:
        pa, pk, sg = row["paper"], row["peak"], row["servegym"]
        lines.append(
            f"| {row['context']:,} | {row['kv_per_seq_gb']:.2f} | {pa['concurrency']} | "
            f"{pk['concurrency']} | {sg['concurrency']} | {pa['prefill_s']} | "
            f"{pk['prefill_s']:.2f} | {sg['prefill_s']:.2f} | {pa['decode_250_s']} | "
            f"{pk['decode_250_s']:.2f} | {sg['decode_250_s']:.2f} |")
    lines += [
        "", "*peak*: the paper's assumptions as we read them: all 80 GiB for weights + KV, "
        "100 % of peak FLOP/s and HBM bandwidth, no per-iteration overhead, one unchunked "
        "prefill pass. *servegym*: the defaults (KV capacity at gpu_memory_utilization 0.9 "
        "less an activation reserve; roofline at 60 % / "
        "80 % of peak, 1 ms per iteration; prefill in 8,192-token chunks).", "",
        "## 2. 4 x A100-80GB (TP4), roofline (no measured table has this shape)", "",
        "| context | KV B/token (per GPU) | KV / seq (GB) | seqs by KV: servegym (peak accounting) "
        "| prefill s | decode step at that batch (ms) | decode tokens/s | requests/s bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in tp4:
        lines.append(
            f"| {row['context']:,} | {row['kv_bytes_per_token']:,} "
            f"({row['kv_bytes_per_token_per_gpu']:,}) | {row['kv_per_seq_gb']:.2f} | "
            f"{row['max_seqs_by_kv']} ({row['max_seqs_paper_accounting']}) | "
            f"{row['prefill_s']:.2f} | {fmt(row['decode_step_ms'], 1)} | "
            f"{fmt(row['decode_tokens_per_s'], 0)} | {row['requests_per_s_bound']:.3f} |")
    lines += [
        "", f"Sequences are context + {OUTPUT_TOKENS} output tokens; {tp4[0]['kv_blocks']:,} "
        "KV blocks of 16 tokens per GPU. requests/s bound = 1 / (prefill + 250 decode steps / "
        "running batch): prefill runs alone, decode steps are shared by the batch.", "",
        f"## 3. {ll['model']} on 4 x A100 (TP4): measured tables against the roofline", "",
        f"Tables: {ll['scaled_from']}; measured up to {ll['measured_up_to']}. Past 4,096 "
        "tokens of context the cost model warned once: "
        f"\"{ll['notice'][0] if ll['notice'] else '(no notice)'}\"", "",
        "| context | seqs by KV | prefill s: measured | prefill s: roofline | decode step ms: "
        "measured | decode step ms: roofline |", "|---|---|---|---|---|---|",
    ]
    for a, b in zip(ll["measured"], ll["roofline"], strict=True):
        lines.append(f"| {a['context']:,} | {a['max_seqs_by_kv']} | {a['prefill_s']:.2f} | "
                     f"{b['prefill_s']:.2f} | {fmt(a['decode_step_ms'], 1)} | "
                     f"{fmt(b['decode_step_ms'], 1)} |")
    lines += [
        "", f"Llama-3.1-8B on one A100 at 131,072 tokens: {ll['llama31_8b_tp1_kv_bound_128k']} "
        "sequences fit by KV.", "",
        "## 4. Simulated: 50K-token requests on one TP4 instance", "",
        f"{simr['requests']} requests of {simr['prompt']:,} + {simr['output']} tokens at t=0, "
        f"{simr['kv_blocks']:,} KV blocks: the running batch peaked at "
        f"**{simr['peak_running']}**: the KV bound at the prompt's blocks "
        f"({simr['kv_bound_prompt']}, what admission reserves; {simr['kv_bound_full']} at "
        f"prompt + output: staggered finishes free blocks before the last admitted request "
        f"needs its output's), far below max_num_seqs {simr['max_num_seqs']}; "
        f"{simr['preemptions']:.0f} preemptions, "
        f"{simr['throughput_rps']:.4f} req/s (section 2's bound at 50K: "
        f"{next(r for r in tp4 if r['context'] == 50_000)['requests_per_s_bound']:.4f}), "
        f"TTFT p50 {simr['ttft_p50_s']:.1f} s, TPOT p50 {1e3 * simr['tpot_p50_s']:.1f} ms "
        f"(simulated in {simr['wall_s']:.2f} s).", "", "```", simr["summary_table"], "```", "",
        "## Where servegym agrees and where not, and why", "",
        *result["discussion"], "",
    ]
    return "\n".join(lines)


def discussion(result: dict[str, Any]) -> list[str]:
    p = {row["context"]: row for row in result["paper_setting"]}
    tp4 = {row["context"]: row for row in result["tp4"]}
    ll = result["llama"]
    lm = {row["context"]: row for row in ll["measured"]}
    lr = {row["context"]: row for row in ll["roofline"]}
    p4, p50 = p[4096], p[50_000]
    m, gpu = get_model(MODEL), get_gpu(GPU)
    free1 = gpu.memory_bytes - m.weight_bytes
    reserve = default_activation_reserve_bytes(m, 1)
    left1 = 0.9 * gpu.memory_bytes - m.weight_bytes - reserve
    attn_flops = 2 * 50_000 * 50_001 / 2 * 2 * m.hidden_size * m.num_layers
    attn_s = attn_flops / gpu.peak_flops
    dense = m.num_params - m.embedding_params  # the embedding is a lookup, not a GEMM
    return [
        f"* **KV bounds concurrency (agrees).** Under the paper's accounting one A100 holds "
        f"{p50['peak']['concurrency']} user at 50K, as the paper says: "
        f"{free1 / 1e9:.1f} GB of HBM beside {m.weight_bytes / 1e9:.1f} GB of weights, one "
        f"50K sequence {p50['kv_per_seq_gb']:.1f} GB. servegym's default holds "
        f"{p50['servegym']['concurrency']}: it budgets 90 % of HBM and keeps "
        f"{reserve / 1e9:.1f} GB for activations, leaving {left1 / 1e9:.1f} GB for KV. At 4K "
        f"the paper's 20 users is more than the KV arithmetic gives "
        f"({p4['peak']['concurrency']} with all of HBM, {p4['servegym']['concurrency']} by "
        f"servegym's default; one 4K sequence is {p4['kv_per_seq_gb']:.2f} GB); the summary "
        f"does not say how the paper counts them. On 4 x A100 the bound falls from "
        f"{tp4[4096]['max_seqs_by_kv']} sequences at 4K to {tp4[50_000]['max_seqs_by_kv']} at "
        f"50K and {tp4[200_000]['max_seqs_by_kv']} at 200K (sequences of context + 250), all "
        f"below max_num_seqs 256, and the simulated run's running batch stops at the KV "
        f"bound ({result['simulated']['peak_running']}).",
        f"* **Prefill grows with context (agrees, to within the efficiency assumption).** At "
        f"peak FLOP/s servegym's roofline gives {p4['peak']['prefill_s']:.2f} s at 4K (paper "
        f"0.89 s, which 2 x {dense / 1e9:.1f}B non-embedding parameters x 4,096 tokens at "
        f"312 TFLOP/s reproduces: {2 * dense * 4096 / gpu.peak_flops:.2f} s) and "
        f"{p50['peak']['prefill_s']:.1f} s at 50K (paper 14.1 s). The 50K gap is the "
        f"attention term: the linear layers take {2 * dense * 50_000 / gpu.peak_flops:.1f} s "
        f"at 50K either way; servegym adds "
        f"{attn_s:.1f} s of attention (QK^T and PV, 2 FLOPs per multiply-add, the causal "
        f"half: 2 n^2 x 7168 x 60 = {attn_flops:.2e} FLOPs), the paper's 14.1 s leaves room "
        f"for about half that; we could not check the paper's formula. At servegym's default "
        f"60 % of peak, with 8K chunks, prefill is {p50['servegym']['prefill_s']:.1f} s; "
        f"per token it costs {p50['servegym']['prefill_s'] / 50_000 * 1e3:.2f} ms at 50K vs "
        f"{p4['servegym']['prefill_s'] / 4096 * 1e3:.2f} ms at 4K (quadratic attention).",
        f"* **Decoding reads the KV cache (agrees).** 250 tokens alone take "
        f"{p4['peak']['decode_250_s']:.1f} s at 4K and {p50['peak']['decode_250_s']:.1f} s at "
        f"50K at full HBM bandwidth (paper 8.5 and 9.8 s), {p4['servegym']['decode_250_s']:.1f} "
        f"and {p50['servegym']['decode_250_s']:.1f} s at servegym's 80 % bandwidth and 1 ms "
        f"per step. With the KV-bound batch running, a 50K decode step on 4 x A100 takes "
        f"{tp4[50_000]['decode_step_ms']:.0f} ms, so each user sees ~"
        f"{1e3 / tp4[50_000]['decode_step_ms']:.0f} tokens/s.",
        f"* **Throughput is prefill-bound at long context (servegym's addition).** On 4 x A100 "
        f"one 50K prefill takes {tp4[50_000]['prefill_s']:.1f} s of the whole group, so at most "
        f"~{tp4[50_000]['requests_per_s_bound']:.3f} req/s; the simulated run's "
        f"{result['simulated']['throughput_rps']:.4f} req/s matches that bound.",
        "* **Not modelled here:** the paper's fourth cost, context switching (swapping KV "
        "over PCIe when HBM overflows), is in servegym as swap preemption but not exercised "
        "above; nor KV compression, which the paper surveys.",
        f"* **Measured vs roofline at long context.** For {ll['model']} the Llama-3-70B "
        f"tables give {lm[4096]['prefill_s']:.2f} / {lm[131072]['prefill_s']:.1f} s of prefill "
        f"at 4K / 128K against the roofline's {lr[4096]['prefill_s']:.2f} / "
        f"{lr[131072]['prefill_s']:.1f} s. Past 4,096 tokens of context the measured model's "
        f"attention is its fit extrapolated (it says so once, and describe() says how far it "
        f"was measured), so the 128K row is an estimate either way.",
    ]


def commit_hash() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--name", default="long_context", help="file stem")
    parser.add_argument("--requests", type=int, default=40,
                        help="requests in the simulated 50K run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths, taken = result_paths(Path(args.out), args.name)
    if taken:
        parser.error(f"{', '.join(taken)} exist; results are never overwritten, "
                     "choose another --name")
    if args.requests < 1:
        parser.error(f"--requests must be >= 1, got {args.requests}")
    command = shlex.join(["python", "experiments/long_context.py",
                          *(sys.argv[1:] if argv is None else argv)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the roofline notice: said in the text
        result: dict[str, Any] = {
            "command": command, "commit": commit_hash(), "model": MODEL, "gpu": GPU,
            "paper_source": PAPER_SOURCE, "gib": GiB,
            "paper_setting": paper_setting(),
            "tp4": sweep(build_cost_model(MODEL, GPU, 4, source="roofline"), MODEL, 4,
                         CONTEXTS),
            "simulated": simulated_run(args.requests, args.seed),
        }
    result["llama"] = llama_measured_vs_roofline()
    result["discussion"] = discussion(result)
    text = render(result)
    print(text)
    md, js = paths
    atomic_write(md, lambda h: h.write(text))
    atomic_write(js, lambda h: json.dump(result, h, indent=2, default=float))
    print(f"wrote {md} and {js}")
    return result


if __name__ == "__main__":
    main()
