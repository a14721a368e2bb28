"""ML helpers the stages share: chat templates and loss masks (`chat`), tiny offline models (`tiny`),
model loading (`models`), batching and logprobs (`batching`), the training driver (`driver`), helpers
between ranks (`distributed`), experiment tracking (`tracking`) and RewardBench scoring (`rewardbench`)."""
