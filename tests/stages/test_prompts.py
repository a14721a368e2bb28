import pytest

from rebelflow.config.errors import DataError
from rebelflow.running.stage_cli import run_job
from rebelflow.store.local import Store
from tests.conftest import make_config, write_prompts


def _jobs(cfg, k):
    from rebelflow.planning.jobs import make_job
    from rebelflow.stages import prompts

    return make_job(prompts, k, prompts.Settings.from_config(cfg.prompts, k), [])


def test_rows_without_prompt_are_dropped_and_counted(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hi"}, {"id": "b", "prompt": ""},
                                                 {"id": "c"}, {"id": "a", "prompt": "dup"}, {"id": "d", "prompt": "Yo"}])
    cfg = make_config(tmp_path, path)
    store = Store(cfg.store.root)
    ref = run_job(_jobs(cfg, 1), store)
    rows = store.read_rows(ref)
    assert [r["prompt_id"] for r in rows] == ["a", "d"]
    assert rows[0]["messages"] == [{"role": "user", "content": "Hi"}]
    assert store.manifest(ref)["summary"]["dropped"] == {"no prompt": 2, "duplicate id": 1}


def test_messages_column_and_system_prompt(tmp_path):
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    path = write_prompts(tmp_path / "p.jsonl", [{"conv": conv}, {"conv": [{"role": "user"}]},
                                                 {"conv": conv[:2]}])
    cfg = make_config(tmp_path, path, prompts={"source": str(path), "prompt_column": None, "messages_column": "conv",
                                               "system_prompt": "Be kind."})
    store = Store(cfg.store.root)
    ref = run_job(_jobs(cfg, 1), store)
    rows = store.read_rows(ref)
    assert len(rows) == 1 and rows[0]["messages"][0] == {"role": "system", "content": "Be kind."}
    assert rows[0]["prompt_id"] == "row-0"
    dropped = store.manifest(ref)["summary"]["dropped"]
    assert dropped == {"malformed messages": 1, "last message is not from the user": 1}


def test_disjoint_slices_and_same_set(tmp_path, prompts_file):
    cfg = make_config(tmp_path, prompts_file, prompts={"per_round": 4, "selection": "disjoint"})
    store = Store(cfg.store.root)
    r1, r2 = (store.read_rows(run_job(_jobs(cfg, k), store)) for k in (1, 2))
    assert len(r1) == len(r2) == 4 and not {r["prompt_id"] for r in r1} & {r["prompt_id"] for r in r2}
    same = make_config(tmp_path, prompts_file, prompts={"per_round": 4})
    assert _jobs(same, 1).ref == _jobs(same, 2).ref  # one shared artifact for every round
    with pytest.raises(DataError, match="takes prompts 12..15, but .* has 12 usable prompts"):
        run_job(_jobs(cfg, 4), store)


def test_empty_file_and_wrong_column_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = make_config(tmp_path, empty)
    with pytest.raises(DataError, match="prompts file .* is empty"):
        run_job(_jobs(cfg, 1), Store(cfg.store.root))
    path = write_prompts(tmp_path / "q.jsonl", [{"question": "Hi"}])
    cfg = make_config(tmp_path, path)
    with pytest.raises(DataError, match=r"no column .prompt. \(columns: \[.question.\]\). Set prompts.prompt_column"):
        run_job(_jobs(cfg, 1), Store(cfg.store.root))


def test_a_broken_jsonl_line_is_named_by_its_line_number(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c",}\n')
    cfg = make_config(tmp_path, broken)
    with pytest.raises(DataError, match=r"line 4 is not valid JSON .*Fix or remove that line"):
        run_job(_jobs(cfg, 1), Store(cfg.store.root))
    broken.write_text('{"prompt": "a"}\n["b"]\n')
    with pytest.raises(DataError, match=r"line 2 holds a JSON list, not an object"):
        run_job(_jobs(cfg, 1), Store(cfg.store.root))


def test_a_moved_file_keeps_its_fingerprint(tmp_path, prompts_file):
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_bytes(prompts_file.read_bytes())
    assert _jobs(make_config(tmp_path, prompts_file), 1).ref == _jobs(make_config(tmp_path, moved), 1).ref


def test_a_dataset_id_with_split_and_messages_column(tmp_path):
    import datasets

    conv = [{"role": "user", "content": "What is rain?"}]
    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"chat": conv, "uid": 7}] * 1),
        "test": datasets.Dataset.from_list([{"chat": conv, "uid": 8}, {"chat": conv, "uid": 9}]),
    })
    folder = tmp_path / "hub-like"
    for split, part in ds.items():
        part.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    cfg = make_config(tmp_path, folder, prompts={"source": str(folder), "split": "test", "prompt_column": None,
                                                 "messages_column": "chat", "id_column": "uid"})
    store = Store(cfg.store.root)
    rows = store.read_rows(run_job(_jobs(cfg, 1), store))
    assert [(r["prompt_id"], r["messages"]) for r in rows] == [("8", conv), ("9", conv)]


def test_sharegpt_messages_and_first_turn_only(tmp_path):
    trajectory = [{"from": "system", "value": "Be exact."}, {"from": "human", "value": "Solve x."},
                  {"from": "gpt", "value": "Step 1"}, {"from": "human", "value": "Observation: wrong"}]
    path = write_prompts(tmp_path / "p.jsonl", [{"trajectory": trajectory}, {"trajectory": [{"from": "bot", "value": "?"}]}])
    base = {"source": str(path), "prompt_column": None, "messages_column": "trajectory"}
    store = Store(make_config(tmp_path, path).store.root)
    whole = store.read_rows(run_job(_jobs(make_config(tmp_path, path, prompts=base), 1), store))
    assert [m["role"] for m in whole[0]["messages"]] == ["system", "user", "assistant", "user"]
    first = store.read_rows(run_job(_jobs(make_config(tmp_path, path, prompts={**base, "first_turn_only": True}), 1), store))
    assert first[0]["messages"] == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Solve x."}]
    assert len(first) == 1  # the row with an unknown speaker is dropped as malformed


def test_offset_skips_rows_so_evaluation_prompts_are_held_out(tmp_path, prompts_file):
    train = make_config(tmp_path, prompts_file, prompts={"per_round": 4, "selection": "disjoint", "shuffle_seed": 3})
    held = make_config(tmp_path, prompts_file, prompts={"per_round": 4, "shuffle_seed": 3, "offset": 8})
    store = Store(train.store.root)
    used = {r["prompt_id"] for k in (1, 2) for r in store.read_rows(run_job(_jobs(train, k), store))}
    evaluated = {r["prompt_id"] for r in store.read_rows(run_job(_jobs(held, 1), store))}
    assert len(used) == 8 and len(evaluated) == 4 and not used & evaluated



def test_hh_transcripts_and_message_lists_give_the_prompt_and_the_later_user_turns(tmp_path):
    """REFUEL setting two: one HH column gives the first user turn as the prompt and the rest as the
    dataset user's turns; ShareGPT lists and plain string lists work too."""
    from rebelflow.stages import prompts

    hh = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No.\n\nHuman:Why?"
    path = write_prompts(tmp_path / "hh.jsonl", [
        {"id": "hh", "chosen": hh}, {"id": "one", "chosen": "\n\nHuman: Only one\n\nAssistant: ok"},
        {"id": "bad", "chosen": "not a transcript"},
    ])
    cfg = make_config(tmp_path, path, prompts={"source": str(path), "prompt_column": None, "id_column": "id",
                                               "messages_column": "chosen", "first_turn_only": True})
    from rebelflow.planning.jobs import make_job

    job = make_job(prompts, 1, prompts.Settings.from_config(cfg.prompts, 1, user_turns_column="chosen"), [])
    store = Store(cfg.store.root)
    ref = run_job(job, store)
    assert {r["prompt_id"]: (r["messages"], r["user_turns"]) for r in store.read_rows(ref)} == {
        "hh": ([{"role": "user", "content": "Hi there"}], ["Tell me a joke", "Why?"]),
        "one": ([{"role": "user", "content": "Only one"}], []),
    }
    assert store.manifest(ref)["summary"]["dropped"] == {"malformed messages": 1}

    sharegpt = [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}]
    settings = prompts.Settings.from_config(cfg.prompts, 1, user_turns_column="more")
    kept, dropped = prompts.select(settings, [{"id": "share", "chosen": hh, "more": sharegpt},
                                              {"id": "list", "chosen": hh, "more": ["x", "y"]},
                                              {"id": "odd", "chosen": hh, "more": 5}])
    assert [r["user_turns"] for r in kept] == [["c"], ["x", "y"]] and dropped == {"malformed user turns": 1}


def test_a_transcript_prompt_ending_with_an_open_assistant_turn_is_a_prompt(tmp_path):
    """Nectar writes prompts as HH transcripts that end with "Assistant:" for the reply to come."""
    from rebelflow.stages import prompts

    nectar = "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: And 3+3?\n\nAssistant:"
    path = write_prompts(tmp_path / "n.jsonl", [{"id": "n", "prompt": nectar}])
    cfg = make_config(tmp_path, path, prompts={"source": str(path), "prompt_column": None, "id_column": "id",
                                               "messages_column": "prompt"})
    kept, dropped = prompts.select(prompts.Settings.from_config(cfg.prompts, 1), [{"id": "n", "prompt": nectar}])
    assert [r["messages"] for r in kept] == [[{"role": "user", "content": "What is 2+2?"},
                                              {"role": "assistant", "content": "4"},
                                              {"role": "user", "content": "And 3+3?"}]]
    assert prompts.parse_hh("\n\nHuman: Hi\n\nAssistant: Hello") == [{"role": "user", "content": "Hi"},
                                                                     {"role": "assistant", "content": "Hello"}]
