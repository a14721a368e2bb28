"""Training throughput against TRL: rebelflow's train stage loop (fit_model with the DPO and REBEL losses of
ml.batching.pair_loss) and TRL's DPOTrainer on the same pairs, the same model and the same batch layout
(pairs per update, pairs per forward pass, epochs, learning rate, β). Both read their reference logprobs
computed beforehand (rebelflow's logprobs stage; TRL's precompute_ref_log_probs) and run on this CPU in fp32.
Prints pairs and tokens (prompt + reply of both sides) per second of training steps, and their ratios,
measured in one run. TRL goes into a throwaway folder (pip --target) that only its worker process sees.

    .venv/bin/python bench/train_vs_trl.py [--pairs 64] [--per-update 16] [--micro 8] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measures import measure

MODEL = {"vocab_size": 4096, "hidden_size": 384, "layers": 6, "heads": 6, "max_positions": 512, "seed": 0}


def texts(n: int, seed: int = 0) -> list[dict]:
    """n prompts with two replies each, cut from the shipped corpus at chat-like lengths."""
    from importlib.resources import files

    words = files("rebelflow.data").joinpath("tiny_corpus.txt").read_text().split()
    rng = random.Random(seed)

    def cut(lo: int, hi: int) -> str:
        start, length = rng.randrange(len(words) - hi), rng.randint(lo, hi)
        return " ".join(words[start:start + length])

    return [{"prompt": cut(10, 40), "chosen": cut(20, 90), "rejected": cut(20, 90)} for _ in range(n)]


def build(folder: Path) -> str:
    from rebelflow.config.campaign import TinyModelConfig
    from rebelflow.ml.tiny import build_policy

    return str(build_policy(folder / "policy", TinyModelConfig(**MODEL)))


def rebelflow_worker(args, policy: str, rows: list[dict], objective: str) -> dict:
    """The train stage's own loop (ml.driver.fit_model) on the pairs, tokenized as prepare does, with π_old from
    the logprobs stage's batch_logps."""
    import torch

    from rebelflow.config.campaign import LauncherConfig, TrainConfig
    from rebelflow.ml.batching import batch_logps, pad_id_of, pair_loss
    from rebelflow.ml.chat import policy_tokenizer, tokenize_reply
    from rebelflow.ml.driver import Fit, fit_model, plan_updates
    from rebelflow.ml.models import load_causal_lm
    from rebelflow.stages import train
    from rebelflow.store.refs import external_model

    tokenizer = policy_tokenizer(policy, external_model(policy))
    pad = pad_id_of(tokenizer)
    model = load_causal_lm(policy, "float32", "sdpa")
    pairs = []
    for r in rows:
        context = [{"role": "user", "content": r["prompt"]}]
        (ci, cm, _), (ri, rm, _) = tokenize_reply(tokenizer, context, r["chosen"]), tokenize_reply(tokenizer, context, r["rejected"])
        pairs.append({"chosen_ids": ci, "chosen_mask": cm, "rejected_ids": ri, "rejected_mask": rm,
                      "chosen_reward": 1.0, "rejected_reward": 0.0})
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            for i in range(0, len(pairs), args.micro):
                chunk = pairs[i:i + args.micro]
                logps = batch_logps(model, [p[f"{side}_ids"] for p in chunk], [p[f"{side}_mask"] for p in chunk], 1.0, pad)
                for p, lp in zip(chunk, logps.tolist(), strict=True):
                    p[f"{side}_logp_old"] = lp
    cfg = TrainConfig(objective=objective, eta=1.0, beta=0.1, lr=args.lr, pairs_per_update=args.per_update,
                      micro_batch_pairs=args.micro, epochs=args.epochs, warmup_ratio=0.1, eval_every=10_000,
                      checkpoint_every=10_000, launcher=LauncherConfig(kind="inprocess"))
    settings = train.Settings(**cfg.model_dump(), temperature=1.0, attn_implementation="sdpa")
    fit = Fit(section="train", per_update_key="pairs_per_update", items=pairs, per_update=args.per_update,
              micro_batch=args.micro, loss=lambda m, micro: pair_loss(m, micro, 1.0, 1.0, pad, objective, 0.1))
    plan = plan_updates(fit, settings, "pairs", "")
    with tempfile.TemporaryDirectory() as tmp:
        trained = fit_model(model, fit, settings, plan, Path(tmp))
    per_update = [sum(len(pairs[i]["chosen_ids"]) + len(pairs[i]["rejected_ids"]) for i in u) for u in plan]
    seconds = sum(t / h["tokens_per_second"] for t, h in zip(per_update, trained.history, strict=True))
    return {"pairs": len(plan) * args.per_update, "tokens": sum(per_update), "seconds": seconds}


TRL_WORKER = r'''
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

args, policy, rows, out = json.loads(sys.argv[1]), sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4]
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(policy)
model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32, attn_implementation="sdpa")
data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                           "chosen": [{"role": "assistant", "content": r["chosen"]}],
                           "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])

class Clock(TrainerCallback):
    seconds, steps, began = 0.0, 0, None
    def on_step_begin(self, *a, **k):
        self.began = time.perf_counter()
    def on_step_end(self, *a, **k):
        self.seconds += time.perf_counter() - self.began
        self.steps += 1

clock = Clock()
config = DPOConfig(output_dir=out, per_device_train_batch_size=args["micro"],
                   gradient_accumulation_steps=args["per_update"] // args["micro"], num_train_epochs=args["epochs"],
                   learning_rate=args["lr"], lr_scheduler_type="cosine", warmup_steps=0.1, beta=0.1,
                   precompute_ref_log_probs=True, max_length=None, logging_steps=1, report_to="none",
                   save_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0,
                   # as rebelflow's fp32 train stage: no bf16 autocast, no activation recomputation, no clipping
                   bf16=False, gradient_checkpointing=False, max_grad_norm=0.0)
trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[clock])
trainer.train()
ds = trainer.train_dataset
per_epoch = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in ds)
print("RESULT " + json.dumps({"pairs": clock.steps * args["per_update"], "tokens": per_epoch * args["epochs"],
                              "seconds": clock.seconds}), flush=True)
'''


def trl_run(args, policy: str, rows: list[dict], tmp: Path) -> dict:
    site = tmp / "trl-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    f"trl{args.trl}"], check=True)
    (tmp / "rows.json").write_text(json.dumps(rows))
    (tmp / "worker.py").write_text(TRL_WORKER)
    done = subprocess.run([sys.executable, str(tmp / "worker.py"), json.dumps(vars(args)), policy,
                           str(tmp / "rows.json"), str(tmp / "trl-out")], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(site)})
    if done.returncode != 0:
        raise SystemExit(f"TRL's worker failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--per-update", type=int, default=16)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--trl", default="==1.16.0", help="TRL's version pin for pip (default ==1.16.0)")
    args = parser.parse_args()
    rows = texts(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy = build(tmp)
        started = time.perf_counter()
        runs = {"TRL DPOTrainer (dpo)": trl_run(args, policy, rows, tmp)}
        for objective in ("dpo", "rebel"):
            runs[f"rebelflow train ({objective})"] = rebelflow_worker(args, policy, rows, objective)
    print(f"{args.pairs} pairs, {args.epochs} epochs, {args.per_update} pairs per update in forward passes of "
          f"{args.micro}; tiny Llama {MODEL}; fp32 on CPU; {time.perf_counter() - started:.0f} s in all")
    trl = runs["TRL DPOTrainer (dpo)"]
    print(f"{'run':28} {'pairs/s':>8} {'tokens/s':>9} {'× TRL':>6}")
    for name, r in runs.items():
        rate = r["tokens"] / r["seconds"]
        print(f"{name:28} {r['pairs'] / r['seconds']:8.2f} {rate:9.0f} {rate / (trl['tokens'] / trl['seconds']):6.2f}")
        if name != "TRL DPOTrainer (dpo)":
            measure("train_vs_trl", f"{name} / TRL DPOTrainer, tokens/s", rate / (trl["tokens"] / trl["seconds"]), "x",
                    at_least=0.9)


if __name__ == "__main__":
    main()
