"""Writes the demo's synthetic data (deterministic; the outputs are committed beside this file):

- addition-prompts.jsonl  training prompts: "What is 3 + 5?" in four phrasings, 320 of the 400
- addition-eval.jsonl     the other 80 prompts, held out for evaluation
- addition-sft.jsonl      demonstrations (prompt, response) for the SFT warm start: the training
                          prompts' answers; a short SFT only half solves the task, REBEL sharpens it

    python configs/data/make_demo_data.py
"""

import json
import random
from pathlib import Path

TEMPLATES = ["What is {a} + {b}?", "Compute {a} + {b}.", "{a} plus {b} equals?", "Add {a} and {b}."]


def main() -> None:
    here = Path(__file__).parent
    rows = [
        {"id": f"add-{a}-{b}-t{t}", "prompt": tpl.format(a=a, b=b), "answer": a + b}
        for a in range(10) for b in range(10) for t, tpl in enumerate(TEMPLATES)
    ]
    random.Random(0).shuffle(rows)
    train, held_out = rows[:320], rows[320:]
    sft = [{"prompt": r["prompt"], "response": str(r["answer"])} for r in train]
    for name, part in (("addition-prompts", train), ("addition-eval", held_out), ("addition-sft", sft)):
        (here / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


if __name__ == "__main__":
    main()
