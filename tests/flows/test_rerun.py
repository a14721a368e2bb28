"""A re-run with nothing to do: `rebelflow run` answers from the store without starting Prefect, and goes
through the flow when anything (an artifact, the summary's format) says otherwise."""

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from rebelflow.cli import app
from rebelflow.config.loading import load_config
from rebelflow.ops.history import read_history
from rebelflow.planning.campaign import campaign_jobs
from rebelflow.store.local import Store


def test_a_rerun_with_nothing_to_do_prints_the_tables_without_a_flow_run(tmp_path, prompts_file):
    """Every stage in the store and the summary made from them: `run` prints the stage table (all cached),
    the rounds and the final policy without starting Prefect; --record goes through the flow anyway; a
    damaged artifact or a summary of another version sends the run through the flow, which mends them."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: again\nrounds: 1\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "generate: {n: 2, max_new_tokens: 6}\nprepare: {validation_pairs: 1}\n"
        "train: {launcher: {kind: inprocess}, pairs_per_update: 4, micro_batch_pairs: 2}\n"
        f"evaluate: {{prompts: {{source: {prompts_file}, id_column: id, per_round: 4}}, n: 1, max_new_tokens: 6}}\n"
    )
    store = str(tmp_path / "store")
    runner = CliRunner()

    def campaign_runs():
        return sum(r["name"] == "again" and r["flow"] == "campaign" for r in read_history(200))

    first = runner.invoke(app, ["run", str(cfg_file), "--store", store])
    assert first.exit_code == 0, first.output
    assert "Up to date" not in first.output and campaign_runs() == 1
    summary_file = Path(store) / "campaigns/again/summary.json"
    made = json.loads(summary_file.read_text())["made_from"]
    jobs = campaign_jobs(load_config(str(cfg_file), store=store))
    assert [i for i, _ in made["artifacts"]] == [j.ref.id for j in jobs]

    index_file = Path(store) / "campaigns/again/index.json"
    index = json.loads(index_file.read_text())
    index["rounds"]["1"]["train"] = {"id": "train-of-another-config", "state": "failed"}  # a run in between
    index_file.write_text(json.dumps(index))
    again = runner.invoke(app, ["run", str(cfg_file), "--store", store])
    assert again.exit_code == 0, again.output
    assert "Up to date" in again.output and campaign_runs() == 1  # no flow run
    train = next(j for j in jobs if j.name == "train")
    assert json.loads(index_file.read_text())["rounds"]["1"]["train"]["id"] == train.ref.id  # recorded again
    table = [line for line in again.output.splitlines() if re.match(r"│ [01] ", line)]
    assert len(table) == len(jobs) and all("│ cached │" in line for line in table)
    peaks = [line.rstrip().rsplit("│", 2)[-2].strip() for line in table]  # each stage's peak MiB, from its manifest
    assert all(p.isdigit() and int(p) > 10 for p in peaks), peaks
    assert "evaluation per round" in again.output and "Final policy:" in again.output

    recorded = runner.invoke(app, ["run", str(cfg_file), "--store", store, "--record"])
    assert recorded.exit_code == 0 and "Up to date" not in recorded.output and campaign_runs() == 2

    store_obj = Store(store)
    damaged = next(j.ref for j in jobs if j.name == "generate")
    data = next(store_obj.path(damaged).rglob("*.parquet"))
    data.write_bytes(data.read_bytes()[:-10])
    mended = runner.invoke(app, ["run", str(cfg_file), "--store", store])
    assert mended.exit_code == 0, mended.output
    assert "Up to date" not in mended.output and campaign_runs() == 3 and store_obj.is_complete(damaged)

    older = json.loads(summary_file.read_text())
    older["made_from"]["version"] = 0  # a summary an earlier rebelflow wrote
    summary_file.write_text(json.dumps(older))
    rewritten = runner.invoke(app, ["run", str(cfg_file), "--store", store])
    assert "Up to date" not in rewritten.output and campaign_runs() == 4
    assert "Up to date" in runner.invoke(app, ["run", str(cfg_file), "--store", store]).output
