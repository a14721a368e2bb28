"""Configuration: the campaign's sections (`campaign`), the reward-model flow's (`reward_model`), the
operations sections shared by both (`operations`: tracking, Hub), the base of every section (`base`),
YAML loading with `--set` overrides (`loading`), named callables (`callables`) and the errors every
layer raises (`errors`)."""
