"""Simulated users for REFUEL's multi-turn dialogues (llm, dataset, scripted). Not in this release:
the package exists so the layout matches DESIGN.md; the multi-turn issue fills it."""
