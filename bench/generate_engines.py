"""Generation: vLLM (its own environment; the CPU build here) against transformers on the same tiny model
and prompts, tokens per second with engine start-up excluded and included. Each engine runs in its own
process through rebelflow's engine classes; printed rates and ratios come from one run.

    .venv/bin/python bench/generate_engines.py [--prompts 256] [--n 4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measures import measure

REPO = Path(__file__).resolve().parents[1]


def worker(engine: str, model: str, prompts: int, n: int, tokens: int) -> None:
    from rebelflow.config.campaign import VLLMConfig
    from rebelflow.engines import SamplingParams, load_engine

    start = time.perf_counter()
    eng = load_engine(engine, model, vllm=VLLMConfig(kv_cache_gib=2, max_model_len=512, enforce_eager=True))
    startup = time.perf_counter() - start
    conversations = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(prompts)]
    params = SamplingParams(n, 1.0, 1.0, tokens, 0)
    eng.generate(conversations[:2], SamplingParams(1, 1.0, 1.0, 4, 0))  # warm-up
    start = time.perf_counter()
    out = []
    step = prompts if engine == "vllm" else 32  # the hf engine pads a batch: 32 prompts per call, as a stage would
    for i in range(0, prompts, step):
        out += eng.generate(conversations[i : i + step], params)
    seconds = time.perf_counter() - start
    made = sum(len(c.token_ids) for row in out for c in row)
    print("RESULT " + json.dumps({"startup": startup, "seconds": seconds, "tokens": made}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "MODEL"))
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.prompts, args.n, args.tokens)
    from rebelflow.config.campaign import TinyModelConfig
    from rebelflow.ml.tiny import build_policy

    model = str(build_policy(tempfile.mkdtemp(), TinyModelConfig(hidden_size=128, layers=4, heads=4)))
    pythons = {"hf": sys.executable, "vllm": str(REPO / ".venv-vllm/bin/python")}
    results = {}
    for engine, python in pythons.items():
        if not Path(python).is_file():
            sys.exit(f"{python} is missing: run `make vllm-env` first")
        cmd = [python, __file__, "--worker", engine, model, "--prompts", str(args.prompts), "--n", str(args.n),
               "--tokens", str(args.tokens)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={"VLLM_CPU_KVCACHE_SPACE": "2",
                                                                        **__import__("os").environ})
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{engine} failed:\n{done.stderr[-3000:]}")
        results[engine] = json.loads(line[7:])
    print(f"{args.prompts} prompts × {args.n} samples, up to {args.tokens} new tokens, tiny Llama (hidden 128, 4 layers)")
    for engine, r in results.items():
        print(f"{engine:5s} start-up {r['startup']:5.1f}s  {r['tokens'] / r['seconds']:8.1f} tokens/s excluding start-up, "
              f"{r['tokens'] / (r['seconds'] + r['startup']):8.1f} including")
    hf, vl = results["hf"], results["vllm"]
    ratio = (vl["tokens"] / vl["seconds"]) / (hf["tokens"] / hf["seconds"])
    ratio_all = (vl["tokens"] / (vl["seconds"] + vl["startup"])) / (hf["tokens"] / (hf["seconds"] + hf["startup"]))
    print(f"vllm/hf tokens per second: {ratio:.1f}x excluding start-up, {ratio_all:.2f}x including")
    measure("generate_engines", "vLLM CPU / transformers tokens/s, excl. start-up", ratio, "x", at_least=1)
    measure("generate_engines", "the same including start-up", ratio_all, "x")


if __name__ == "__main__":
    main()
