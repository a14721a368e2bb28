"""tiny_model: build the demo policy offline — a random tiny Llama and a BPE tokenizer trained on the
corpus shipped in the package, with a ChatML chat template. Consumes nothing; produces a model artifact
(`model/`: safetensors, config, tokenizer). Stands in for a Hub model where nothing can be downloaded.

Run alone: python -m rebelflow.stages.tiny_model configs/demo-rebel.yaml
"""

from __future__ import annotations

from rebelflow.config.campaign import TinyModelConfig as Settings
from rebelflow.ml.tiny import build_policy
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "tiny_model", 1, "model"


def run(settings: Settings, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [])
    if store.is_complete(ref, quarantine=True):
        return ref
    with store.writer(ref, VERSION, hashed_settings(settings), []) as w:
        path = build_policy(w.model_dir(), settings)
        params = sum(f.stat().st_size for f in path.glob("*.safetensors")) // 4
        w.finish(
            summary={"parameters (approx.)": params, **settings.model_dump()},
            card="A randomly initialised tiny Llama policy and its offline-trained BPE tokenizer.",
        )
    return ref


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
