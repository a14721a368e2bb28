"""Prefect flows: `round_flow` (one REBEL round) and `campaign_flow` (rounds in sequence)."""
