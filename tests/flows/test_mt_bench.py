"""MT-Bench (`rebelflow mt-bench`): the shipped questions answered at FastChat's temperatures, both turns,
graded 1–10 per turn (math, reasoning and coding against the reference answers), the table of turn 1, turn 2,
average and categories; an unreadable grade asked again then left unjudged; gradings cached."""

import json

from typer.testing import CliRunner

from rebelflow.cli import app
from rebelflow.judges.mt_bench import (
    NEEDS_REFERENCE,
    TEMPERATURES,
    grading_messages,
    parse_rating,
    questions,
    references,
)

GRADER = '''
import json, os

def grade(conversation, reference):
    """3 for turn 1 and 4 for turn 2, doubled with a reference answer; question 81's turn 2 unreadable."""
    turn = len(conversation) // 2
    with open(os.environ["GRADER_LOG"], "a") as log:
        log.write(json.dumps({"turn": turn, "first": conversation[0]["content"][:40], "reference": reference,
                              "answers": [m["content"] for m in conversation if m["role"] == "assistant"]}) + "\\n")
    if turn == 2 and conversation[0]["content"].startswith("Compose an engaging travel blog post"):
        return "I would rather not say."
    return (2 if reference else 1) * (3 if turn == 1 else 4)
'''


def test_the_shipped_data_and_fastchats_grading_prompts():
    qs = questions()
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs)
    assert {q["category"] for q in qs} == set(TEMPERATURES)
    needing = [q["question_id"] for q in qs if q["category"] in NEEDS_REFERENCE]
    assert len(needing) == 30 and all(len(references()[i]) == 2 for i in needing)
    math = next(q for q in qs if q["category"] == "math")
    first = grading_messages("math", math["turns"], ["four", "five"], 1, references()[math["question_id"]])
    assert "[The Start of Reference Answer]" in first[1]["content"] and "four" in first[1]["content"]
    second = grading_messages("math", math["turns"], ["four", "five"], 2, references()[math["question_id"]])
    assert "second question" in second[0]["content"] and math["turns"][1] in second[1]["content"]
    writing = grading_messages("writing", qs[0]["turns"], ["a", "b"], 1, None)
    assert "Reference" not in writing[1]["content"] and writing[1]["content"].count("[[rating]]") == 1


def test_ratings_are_read_as_fastchat_reads_them():
    assert parse_rating("Clear and correct. Rating: [[7]]") == 7.0
    assert parse_rating("Rating: [[8.5]]") == 8.5
    assert parse_rating("Rating: [6]") == 6.0  # FastChat's fallback
    assert parse_rating("no rating here") is None
    assert parse_rating("Rating: [[0]]") is None and parse_rating("Rating: [[11]]") is None  # outside 1-10


def test_mt_bench_answers_both_turns_grades_them_and_reports_the_table(tmp_path, tiny_policy, monkeypatch):
    (tmp_path / "grader.py").write_text(GRADER)
    monkeypatch.setenv("GRADER_LOG", str(tmp_path / "grades.jsonl"))
    store, runner = tmp_path / "store", CliRunner()
    args = ["mt-bench", tiny_policy, "--judge", f"{tmp_path / 'grader.py'}:grade", "--max-new-tokens", "4",
            "--store", str(store)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output[result.output.index("{"):])
    # 50 questions graded 3 then 4, 30 with references 6 then 8; question 81's turn 2 unjudged (3 tries)
    assert s["graded"] == 159 and s["unjudged"] == 1
    assert s["turn_1"] == round((50 * 3 + 30 * 6) / 80, 4) and s["turn_2"] == round((49 * 4 + 30 * 8) / 79, 4)
    assert s["average"] == round((50 * 3 + 30 * 6 + 49 * 4 + 30 * 8) / 159, 4)
    assert s["by_category"]["math"] == 7.0 and s["by_category"]["roleplay"] == 3.5
    asked = [json.loads(line) for line in (tmp_path / "grades.jsonl").read_text().splitlines()]
    assert len(asked) == 160 + 2  # the unreadable one asked three times
    assert all((a["reference"] is not None) == (a["first"] in {q["turns"][0][:40] for q in questions()
                                                                 if q["category"] in NEEDS_REFERENCE}) for a in asked)
    assert all(len(a["answers"]) == a["turn"] for a in asked)  # turn 2 graded on the whole conversation

    from rebelflow.store.local import Store

    st = Store(store)
    answers = st.read_rows(st.find(s["answers"]))
    assert {r["category"]: r["temperature"] for r in answers} == TEMPERATURES
    turn2 = next(a for a in asked if a["turn"] == 2 and a["first"].startswith("Compose an engaging"))
    row = next(r for r in answers if r["turns"][0].startswith("Compose an engaging"))
    assert turn2["answers"] == row["answers"]

    (tmp_path / "grades.jsonl").unlink()  # graded again from scratch: only the unreadable one reaches the grader
    import shutil

    shutil.rmtree(st.path(st.find(s["grades"])))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "grades.jsonl").read_text().splitlines()) == 3
    assert "MT-Bench" in again.output and "math 7.00" in again.output
    bad = runner.invoke(app, ["mt-bench", tiny_policy, "--judge", "gpt-4", "--store", str(store)])
    assert bad.exit_code == 2 and "--judge-url" in bad.output
