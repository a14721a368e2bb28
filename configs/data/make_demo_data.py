"""Writes the demo's synthetic data (deterministic; the outputs are committed beside this file):

- addition-prompts.jsonl  training prompts: "What is 3 + 5?" in four phrasings, 320 of the 400
- addition-eval.jsonl     the other 80 prompts, held out for evaluation
- addition-sft.jsonl      demonstrations (prompt, response) for the SFT warm start: the training
                          prompts' answers; a short SFT only half solves the task, REBEL sharpens it
- addition-dialogues-sft.jsonl  3-turn demonstrations for the REFUEL demo's warm start: each training
                          prompt, answered, then the scripted user's follow-up questions, answered

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
    dialogues = [{"messages": demo_dialogue(r["prompt"], r["answer"], turns=3)} for r in train]
    for name, part in (("addition-prompts", train), ("addition-eval", held_out), ("addition-sft", sft),
                       ("addition-dialogues-sft", dialogues)):
        (here / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def demo_dialogue(prompt: str, answer: int, turns: int) -> list[dict]:
    """The prompt and the scripted user's follow-ups, each answered correctly."""
    import re

    from rebelflow.users.examples import addition_quiz

    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(answer)}]
    for _ in range(turns - 1):
        question = addition_quiz(messages)
        a, b = (int(x) for x in re.findall(r"\d+", question))
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": str(a + b)}]
    return messages


if __name__ == "__main__":
    main()
