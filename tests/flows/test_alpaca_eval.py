"""`rebelflow alpaca-eval`: a policy against reference outputs, judged in both orders in the preference
format; the raw and the length-controlled win rate (with the instructions' difficulty when the file has it)."""

import json

from typer.testing import CliRunner

from rebelflow.cli import app

JUDGE = '''
import math

def shorter(a, b):
    """Prefers the shorter answer, more surely the larger the difference."""
    return 1 / (1 + math.exp((len(a[-1]["content"]) - len(b[-1]["content"])) / 40))
'''


def test_alpaca_eval_reports_raw_and_length_controlled_win_rates(tmp_path, tiny_policy, monkeypatch):
    (tmp_path / "judge.py").write_text(JUDGE)
    reference = tmp_path / "reference.json"
    rows = [{"instruction": f"Tell me about number {i}.", "output": "It is a number. " * (1 + i % 7),
             "generator": "reference", "instruction_difficulty": (i % 5 - 2) / 2} for i in range(24)]
    reference.write_text(json.dumps(rows))
    store, runner = tmp_path / "store", CliRunner()
    args = ["alpaca-eval", tiny_policy, "--reference", str(reference), "--judge", f"{tmp_path / 'judge.py'}:shorter",
            "--max-new-tokens", "6", "--store", str(store)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output[result.output.index("{"):])
    assert s["judged"] == 24 and s["unjudged"] == 0 and s["judge"].startswith("callable:")
    assert s["judge_win_rate"] > 0.6  # the tiny policy's answers are short, the judge likes short answers
    assert 0 < s["judge_lc_win_rate"] < 1 and s["judge_lc_length_weight"] > 0 and "judge_lc_difficulty_weight" in s

    from rebelflow.store.local import Store

    st = Store(store)
    answered = st.read_rows(st.find(s["answers"]))
    assert [r["baseline_response"] for r in answered] == [r["output"] for r in rows]
    assert all(r["messages"] == [{"role": "user", "content": q["instruction"]}] for r, q in zip(answered, rows, strict=True))
    judged = st.read_rows(st.find(s["grades"]))
    assert s["judge_win_rate"] == round(sum(r["outcome"] for r in judged) / 24, 5)
    assert all(r["new_chars"] == len(a["new_response"]) for r, a in zip(judged, answered, strict=True))
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "length-controlled" in table.output

    (tmp_path / "bad.jsonl").write_text('{"instruction": "hi"}\n')
    bad = runner.invoke(app, [*args[:3], str(tmp_path / "bad.jsonl"), *args[4:], "--store", str(tmp_path / "s2")])
    assert bad.exit_code == 2 and "lack an instruction or an output" in " ".join(bad.output.split()), bad.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = runner.invoke(app, [*args[:3], "hub", *args[4:], "--store", str(tmp_path / "s3")])
    assert hub.exit_code == 2 and "could not fetch AlpacaEval's reference outputs" in " ".join(hub.output.split())


def test_the_hub_reference_is_alpaca_evals_own_file_with_each_instructions_difficulty(tmp_path, tiny_policy,
                                                                                      monkeypatch):
    """`--reference hub` asks the Hub for AlpacaEval 2.0's reference outputs and instruction difficulties
    (here a stand-in download), joins them by instruction index and keeps them in the store."""
    import huggingface_hub

    from rebelflow.ops.evaluation import alpaca_eval_config

    asked = []
    outputs = [{"instruction": f"q{i}", "output": f"a{i}", "generator": "gpt4_1106_preview"} for i in range(3)]
    (tmp_path / "ref.json").write_text(json.dumps(outputs))
    (tmp_path / "difficulty.csv").write_text(",instruction_difficulty\n2,0.5\n0,-1.25\n1,0.0\n")

    def download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename, kwargs))
        return str(tmp_path / ("ref.json" if filename.endswith(".json") else "difficulty.csv"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    (tmp_path / "judge.py").write_text(JUDGE)
    cfg = alpaca_eval_config(tiny_policy, "hub", f"{tmp_path / 'judge.py'}:shorter", None, None, 8,
                             store={"root": str(tmp_path / "store")})
    assert [(r, f, k.get("subfolder"), k.get("repo_type")) for r, f, k in asked] == [
        ("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json", None, "dataset"),
        ("tatsu-lab/alpaca_eval", "instruction_difficulty.csv", None, "dataset")]
    kept = json.loads(open(cfg.reference).read())
    assert cfg.reference == str(tmp_path / "store" / "inputs" / "alpaca_eval_gpt4_baseline.json")
    assert [r["instruction_difficulty"] for r in kept] == [-1.25, 0.0, 0.5] and cfg.judge.format == "preference"
