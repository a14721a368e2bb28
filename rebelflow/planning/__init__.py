"""Planning: stage jobs and their fingerprints without doing any work — the campaign plan (`campaign`),
the reward-model plan (`reward_model`), and the checks before any model loads (`preflight`)."""
