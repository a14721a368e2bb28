"""Model stages against the machine's limit: the dense matmul peak of this machine (torch, fp32 and bf16 where
the CPU computes it) and the FLOP/s that rebelflow's own step functions reach on a ~30M-parameter Llama at
chat-like lengths, as a percentage of that peak, with the time split of a training step and what limits
each stage (the operators outside matmuls that take the time, from torch's profiler). On a GPU the same
percentage is the MFU.

FLOPs counted: 2·N per processed (non-padding) token for a forward pass, 6·N for forward + backward, N the
parameters a token's matmuls touch (the decoder layers and the LM head, not the embedding lookup), plus
attention 4·L·d·T per token forward (PaLM's convention: the whole context T, no causal halving). Padding
is computed but not counted, so padding waste shows as lost efficiency.

Stages, each through the function the stage itself calls:
- train: `ml.batching.pair_loss` (REBEL, chosen and rejected passes), backward, AdamW (fp32 master copies
  of bf16 weights, as the trainer steps them);
- sft: `stages.sft.reply_loss`, backward, AdamW;
- logprobs: `ml.batching.batch_logps` of both sides, no gradient;
- score: a sequence classifier's forward over prompt + response (the classifier reward);
- prefill: the policy's forward over the prompts, logits of the last position only (generation's prefill).

    .venv/bin/python bench/train_efficiency.py [--pairs-per-step 4] [--steps 3] [--modes fp32,bf16,autocast]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop lines

import torch  # noqa: E402
from measures import measure  # noqa: E402

from rebelflow.ml.batching import batch_logps, pad_and_forward, pair_loss, right_padded
from rebelflow.ml.models import MasterWeights, bf16_native, device
from rebelflow.stages.sft import reply_loss

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
              "aten::_scaled_dot_product", "mkldnn", "aten::_addmm_activation")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """The best FLOP/s of square matmuls (1024 to 4096) in `dtype` on this device."""
    best = 0.0
    for n in (1024, 2048, 4096) if device().type == "cuda" else (1024, 2048):
        a, b = (torch.randn(n, n, device=device()).to(dtype) for _ in range(2))
        a @ b
        sync()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            a @ b
            runs += 1
        sync()
        best = max(best, 2 * n**3 * runs / (time.perf_counter() - start))
    return best


def shape_peaks(dtype: torch.dtype, cfg, tokens: int = 1024, seconds: float = 1.0) -> dict[str, float]:
    """FLOP/s of the model's own matmuls over a batch of `tokens` (the attention and MLP projections and the
    LM head) in the three layouts a training step runs them: forward (x·W), the input gradient (dy·Wᵀ) and
    the weight gradient (xᵀ·dy, the long inner dimension). The ceiling this model's shapes allow here."""
    d, m, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes = [(d, d)] * 4 + [(d, m)] * 2 + [(m, d), (d, v)]  # (in, out) of each projection
    rand = lambda *size: torch.randn(*size, device=device()).to(dtype)  # noqa: E731
    ops = {  # as nn.Linear stores its weight W (out, in) and autograd computes with it
        "forward": [(rand(tokens, i), rand(o, i).t()) for i, o in shapes],  # x·Wᵀ
        "input grad": [(rand(tokens, o), rand(o, i)) for i, o in shapes],  # dy·W
        "weight grad": [(rand(tokens, o).t(), rand(tokens, i)) for i, o in shapes],  # dyᵀ·x
    }
    flops = 2 * tokens * sum(i * o for i, o in shapes)
    out = {}
    for name, pairs_ in ops.items():
        for a, b in pairs_:
            a @ b
        sync()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for a, b in pairs_:
                a @ b
            runs += 1
        sync()
        out[name] = flops * runs / (time.perf_counter() - start)
    return out


def build(kind: str, seed: int = 0):
    """A ~30M-parameter Llama (d 512, 8 layers, MLP 1376, vocab 8192), random weights, no download."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                      tie_word_embeddings=False, pad_token_id=0, num_labels=1, attn_implementation="sdpa")
    model = (LlamaForCausalLM if kind == "policy" else LlamaForSequenceClassification)(cfg)
    return model.to(device()), cfg


def matmul_params(model, cfg) -> int:
    """Parameters a token's matmuls touch: all but the embedding lookup (the LM or score head included)."""
    return sum(p.numel() for p in model.parameters()) - cfg.vocab_size * cfg.hidden_size


def pairs(n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Chat-like pairs: prompts of 48-160 tokens, responses of 32-192, about 216 tokens a sequence."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = rng.randint(48, 160)
        row = {"chosen_reward": 1.0, "rejected_reward": 0.0}
        for side in ("chosen", "rejected"):
            r = rng.randint(32, 192)
            row[f"{side}_ids"] = [rng.randrange(4, vocab) for _ in range(p + r)]
            row[f"{side}_mask"] = [0] * p + [1] * r
            row[f"{side}_logp_old"] = -float(r)
        row["prompt_len"] = p
        out.append(row)
    return out


def forward_flops(lengths: list[int], n_params: int, cfg) -> float:
    return sum(t * (2 * n_params + 4 * cfg.num_hidden_layers * cfg.hidden_size * t) for t in lengths)


class Clock:
    """Seconds per phase of a step, summed over steps."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        sync()
        start = time.perf_counter()
        yield
        sync()
        self.seconds[phase] += time.perf_counter() - start


def precision(mode: str):
    """A forward's context: bf16 autocast (fp32 weights) or nothing (the weights' own dtype)."""
    if mode == "autocast":
        return torch.autocast(device().type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model, mode: str):
    """The model in the mode's weights, and what the optimizer steps: fp32 params, or fp32 master copies of
    bf16 weights (as rebelflow's trainers step 16-bit weights)."""
    if mode == "bf16":
        model = model.to(torch.bfloat16)
        masters = MasterWeights([p for p in model.parameters() if p.requires_grad])
        return model, masters, torch.optim.AdamW(masters.copies, lr=1e-5)
    return model, None, torch.optim.AdamW(model.parameters(), lr=1e-5)


def train_steps(model, batches: list, loss_of: Callable, mode: str, seqs_of: Callable) -> tuple[Clock, float]:
    """Forward + backward + AdamW per batch; the time split, with the batch's padding (data) timed apart
    from the forward that includes it."""
    model, masters, optimizer = prepare(model, mode)
    model.train()
    clock = Clock()

    def step(batch) -> None:
        with clock("forward"), precision(mode):
            loss, _ = loss_of(model, batch)
        with clock("backward"):
            loss.backward()
        with clock("optimizer"):
            if masters is not None:
                masters.take_grads()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if masters is not None:
                masters.give_weights()

    step(batches[0])  # warm-up
    clock.seconds.clear()
    sync()
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    sync()
    wall = time.perf_counter() - start
    data = Clock()  # the batches' padding, which the forward does first, timed apart (outside the wall)
    for batch in batches[1:]:
        with data("data"):
            for seqs in seqs_of(batch):
                right_padded(seqs, 0, device())
    clock.seconds["forward"] -= data.seconds["data"]
    clock.seconds = {"data": data.seconds["data"], **clock.seconds}
    clock.seconds["idle"] = max(0.0, wall - sum(clock.seconds.values()))
    return clock, wall


def no_grad_steps(model, batches: list, run: Callable, mode: str) -> float:
    model = model.to(torch.bfloat16) if mode == "bf16" else model
    model.eval()
    with torch.no_grad(), precision(mode):
        run(model, batches[0])
        sync()
        start = time.perf_counter()
        for batch in batches[1:]:
            run(model, batch)
        sync()
    return time.perf_counter() - start


def limits(model, batch, run: Callable, mode: str, grad: bool) -> tuple[float, str]:
    """What takes a step's time outside matmuls: the top operators by self time (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx, precision(mode), profile(activities=activities) as prof:
        out = run(model, batch)
        if grad:
            out.backward()
    # the operators as torch calls them (on a GPU each one's kernels' time is its own; the kernels are also
    # listed as events of their own, which would count the time twice)
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
    attr = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    matmul = sum(getattr(e, attr) for e in events if e.key.startswith(MATMUL_OPS))
    others = sorted((e for e in events if not e.key.startswith(MATMUL_OPS)), key=lambda e: -getattr(e, attr))[:3]
    model.zero_grad(set_to_none=True)
    top = ", ".join(f"{e.key.removeprefix('aten::')} {getattr(e, attr) / total:.0%}" for e in others)
    return matmul / total, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-per-step", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up)")
    parser.add_argument("--modes", default="fp32,bf16,autocast")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    native = bf16_native()
    modes = [m for m in args.modes.split(",") if m == "fp32" or native]
    if not modes:
        parser.error(f"no mode of {args.modes!r} runs here: this machine has no native bf16 (use fp32)")
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; bf16 native: {native}")
    squares = {"fp32": matmul_peak(torch.float32)}
    if native:
        squares["bf16"] = matmul_peak(torch.bfloat16)

    policy, cfg = build("policy")
    layouts = {k: shape_peaks(torch.float32 if k == "fp32" else torch.bfloat16, cfg) for k in squares}
    peaks = {k: max(squares[k], *layouts[k].values()) for k in squares}  # the best matmul rate seen
    print("matmul peak (the best of square matmuls and the model's own): "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    for k, got in layouts.items():
        print(f"{k} matmuls at the model's shapes (1024 tokens): " + ", ".join(
            f"{name} {v / 1e9:.0f} GFLOP/s ({v / peaks[k]:.0%})" for name, v in got.items()))
    # a training step runs each layout once per projection; a forward-only stage only the first
    shapes = {k: 3 / sum(1 / v for v in got.values()) for k, got in layouts.items()}
    forward_shapes = {k: got["forward"] for k, got in layouts.items()}
    data = pairs(args.pairs_per_step * (args.steps + 1), 8192)
    batches = [data[i : i + args.pairs_per_step] for i in range(0, len(data), args.pairs_per_step)]
    n_policy = matmul_params(policy, cfg)
    scorer, _ = build("score")
    n_score = matmul_params(scorer, cfg)
    print(f"model: Llama, {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters ({n_policy / 1e6:.1f}M in "
          f"matmuls), {args.pairs_per_step} pairs a step (~{sum(len(r['chosen_ids']) for r in data) / len(data):.0f} "
          f"tokens a sequence), {args.steps} timed steps")

    sides = ("chosen", "rejected")
    seq_lengths = lambda b: [len(r[f"{s}_ids"]) for r in b for s in sides]  # noqa: E731
    rebel = lambda m, b: pair_loss(m, b, 1.0, 1.0, 0)  # noqa: E731
    sft_items = lambda b: [(r["chosen_ids"], r["chosen_mask"]) for r in b] + [(r["rejected_ids"], r["rejected_mask"]) for r in b]  # noqa: E731

    def logps(m, b):
        return [batch_logps(m, [r[f"{s}_ids"] for r in b], [r[f"{s}_mask"] for r in b], 1.0, 0) for s in sides]

    def score(m, b):
        return pad_and_forward(m, [r[f"{s}_ids"] for r in b for s in sides], 0)

    def prefill(m, b):
        ids, attention = right_padded([r["chosen_ids"][: r["prompt_len"]] for r in b], 0, device())
        return m(input_ids=ids, attention_mask=attention, logits_to_keep=1)

    def padded(b: list[dict]) -> tuple[int, int]:  # (real tokens, computed tokens) of a step's passes
        real = sum(seq_lengths(b))
        return real, sum(len(b) * max(len(r[f"{s}_ids"]) for r in b) for s in sides)

    real, computed = map(sum, zip(*(padded(b) for b in batches[1:]), strict=True))
    print(f"padding: {1 - real / computed:.0%} of the tokens a train or logprobs step computes (each pass padded "
          "to its longest sequence)")
    results = []
    for mode in modes:
        peak = peaks["fp32" if mode == "fp32" else "bf16"]
        timed = batches[1:]
        rows = {}
        base = {k: v.clone() for k, v in policy.state_dict().items()}
        clock, wall = train_steps(policy, batches, rebel, mode, lambda b: ([r[f"{s}_ids"] for r in b] for s in sides))
        rows["train"] = (3 * sum(forward_flops(seq_lengths(b), n_policy, cfg) for b in timed), wall, clock)
        policy = policy.float()
        policy.load_state_dict(base)
        clock, wall = train_steps(policy, batches, lambda m, b: reply_loss(m, sft_items(b), 0), mode,
                                  lambda b: [[ids for ids, _ in sft_items(b)]])
        rows["sft"] = (3 * sum(forward_flops(seq_lengths(b), n_policy, cfg) for b in timed), wall, clock)
        policy = policy.float()
        policy.load_state_dict(base)
        rows["logprobs"] = (sum(forward_flops(seq_lengths(b), n_policy, cfg) for b in timed),
                            no_grad_steps(policy, batches, logps, mode), None)
        rows["score"] = (sum(forward_flops(seq_lengths(b), n_score, cfg) for b in timed),
                         no_grad_steps(scorer, batches, score, mode), None)
        head = cfg.vocab_size * cfg.hidden_size
        rows["prefill"] = (sum(forward_flops([r["prompt_len"] for r in b], n_policy - head, cfg) for b in timed),
                           no_grad_steps(policy, batches, prefill, mode), None)
        why_train = limits(policy, batches[1], lambda m, b: rebel(m, b)[0], mode, grad=True)
        why_logps = limits(policy, batches[1], logps, mode, grad=False)
        policy, scorer = policy.float(), scorer.float()
        policy.load_state_dict(base)
        print(f"\n{mode} (peak {peak / 1e9:.0f} GFLOP/s)")
        print(f"  {'stage':<9} {'GFLOP/s':>8} {'of peak':>8}   time split")
        for stage, (flops, seconds, clock) in rows.items():
            split = ("  ".join(f"{k} {v / seconds:.0%}" for k, v in clock.seconds.items()) if clock else "forward only")
            print(f"  {stage:<9} {flops / seconds / 1e9:8.1f} {flops / seconds / peak:8.0%}   {split}")
            results.append({"mode": mode, "stage": stage, "gflops": flops / seconds / 1e9, "of_peak": flops / seconds / peak,
                             "peak_gflops": peak / 1e9, "split": dict(clock.seconds) if clock else None})
        for stage, (share, top) in (("train", why_train), ("logprobs", why_logps)):
            flops, seconds, _ = rows[stage]
            in_step = flops / seconds / (real / computed) / share  # the matmuls' own rate inside the step
            print(f"  {stage}: {flops / seconds / peak:.0%} of peak = {real / computed:.0%} real tokens (padding) × "
                  f"{share:.0%} of op time in matmuls (then {top}) × {in_step / peak:.0%} for the rest (the "
                  "matmuls' own rate inside the step" + (", the optimizer)" if stage == "train" else ")"))
            next(r for r in results if r["mode"] == mode and r["stage"] == stage).update(
                matmul_share=share, matmul_in_step_of_peak=in_step / peak, real_token_share=real / computed)
    for stage in ("train", "logprobs"):
        got = {r["mode"]: r for r in results if r["stage"] == stage}
        best = max(got.values(), key=lambda r: r["gflops"])
        ceiling = (shapes if stage == "train" else forward_shapes)["fp32" if best["mode"] == "fp32" else "bf16"] / 1e9
        losses = {"padding": 1 - best["real_token_share"], "operators outside matmuls": 1 - best["matmul_share"],
                  "the rest (matmuls slower inside the step than alone, the optimizer)":
                      1 - best["matmul_in_step_of_peak"] * best["peak_gflops"] / ceiling}
        worst = max(losses, key=losses.get)
        verdict = ("meets the target" if best["of_peak"] >= 0.5 else
                   f"below the target; the largest loss is {worst} ({losses[worst]:.0%}); the model's own matmul "
                   f"layouts alone reach {ceiling / best['peak_gflops']:.0%} of the peak")
        each = ", ".join(f"{m} {r['of_peak']:.0%} of its peak" + ("" if m == "fp32" or "fp32" not in got else
                         f" ({r['gflops'] / got['fp32']['gflops']:.1f}x fp32's FLOP/s)") for m, r in got.items())
        print(f"\n{stage} (target 50% of the peak): {each}. Fastest, {best['mode']}: {verdict}")
        for m, r in got.items():
            measure("train_efficiency", f"{stage} FLOP/s, {m}, of its peak", r["of_peak"], "%", at_least=0.5)
        if "fp32" in got and "bf16" in got:
            measure("train_efficiency", f"{stage} FLOP/s, bf16 / fp32", got["bf16"]["gflops"] / got["fp32"]["gflops"], "x")
        for r in got.values():
            r["shape_ceiling_gflops"] = (shapes if stage == "train" else forward_shapes)[
                "fp32" if r["mode"] == "fp32" else "bf16"] / 1e9
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"peaks_gflops": {k: v / 1e9 for k, v in peaks.items()},
                       "layouts_gflops": {k: {n: v / 1e9 for n, v in got.items()} for k, got in layouts.items()},
                       "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
