"""Prefect flows: `round` (one round, step by step as the algorithm runs), `campaign` (round 0, then rounds in
sequence, then the summary), `reward_model` (rm-train, rm-eval) and `scheduled` (deployment entries that
take a config path); `common` runs one step, `summary` writes summary.json/png, `ui` publishes artifacts."""
