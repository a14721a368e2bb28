"""The reference policy of an online round's KL term, the cheapest exact one for what trains:

- LoRA: the policy itself with its adapters disabled;
- the top k decoder layers: a model that shares the policy's (frozen) embeddings and bottom layers and has
  frozen copies of the top k layers, the final norm and the LM head (when untied) — exact reference
  logprobs for the memory of ~k layers, since nothing below the top k ever changes;
- everything: a frozen full copy.

`Reference.logps(ids, masks, temperature, pad_id)` gives summed log-probabilities like
`batching.batch_logps`, and `token_logps` the per-token ones (PPO's KL per token), without gradients; call
them with the policy in eval mode (the top-k reference
shares the policy's bottom modules, so it follows the policy's mode).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from rebelflow.ml.batching import batch_logps, batch_token_logps

FINAL_NORMS = ("norm", "final_layer_norm", "ln_f")  # Llama/Mistral/Qwen, GPT-NeoX, GPT-2 style


class Reference:
    def __init__(self, model, disabled_adapters: bool = False):
        self.model, self.disabled_adapters = model, disabled_adapters

    @torch.no_grad()
    def logps(self, ids: list[list[int]], masks: list[list[int]], temperature: float, pad_id: int) -> torch.Tensor:
        with self._adapters_off():
            return batch_logps(self.model, ids, masks, temperature, pad_id)

    @torch.no_grad()
    def token_logps(self, ids: list[list[int]], masks: list[list[int]], temperature: float,
                    pad_id: int) -> list[torch.Tensor]:
        with self._adapters_off():
            return batch_token_logps(self.model, ids, masks, temperature, pad_id)

    def _adapters_off(self):
        return self.model.disable_adapter() if self.disabled_adapters else contextlib.nullcontext()


def make_reference(policy, trainable: str | int, initial=None) -> Reference:
    """The reference for a policy whose trainable part is `trainable` ("all", "lora" or k), made before its
    first update. `initial` is the campaign's starting model when the policy is not (a later round): then
    LoRA and full training take it frozen, and top-k training loads its top layers into the copies (the
    layers below never changed)."""
    if trainable in ("lora", "all"):
        if initial is not None:
            return Reference(frozen(initial))
        return Reference(policy, disabled_adapters=True) if trainable == "lora" else Reference(frozen(copy.deepcopy(policy)))
    view = top_layers_copy(policy, int(trainable))
    if initial is not None:
        copies = top_modules(view, int(trainable))
        for mine, theirs in zip(copies, top_modules(initial, int(trainable)), strict=True):
            mine.load_state_dict(theirs.state_dict())
    return Reference(view)


def top_modules(model, k: int) -> list:
    """The modules a top-k reference copies: the top k layers, the final norm, the LM head when untied."""
    decoder = model.get_decoder()
    out = list(decoder.layers[-k:])
    norm = next((name for name in FINAL_NORMS if name in decoder._modules), None)
    if norm is not None:
        out.append(decoder._modules[norm])
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        out.append(head)
    return out


def frozen(module):
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _with_modules(module, replace: dict):
    """A shallow copy of `module` whose child modules are its own except those in `replace`: the copy
    shares every other submodule (and so its parameters) with the original."""
    view = copy.copy(module)
    view._modules = {**module._modules, **replace}
    return view


def _child_name(parent, child) -> str:
    return next(name for name, module in parent._modules.items() if module is child)


def top_layers_copy(policy, k: int):
    """A model sharing the policy's embeddings and bottom layers, with frozen copies of its top k layers,
    final norm and (untied) LM head."""
    decoder = policy.get_decoder()
    layers = decoder.layers
    if not 0 < k <= len(layers):
        raise ValueError(f"top {k} layers asked of a model with {len(layers)}")
    top = [frozen(copy.deepcopy(layer)) for layer in layers[-k:]]
    replace = {"layers": torch.nn.ModuleList([*layers[:-k], *top])}
    norm = next((name for name in FINAL_NORMS if name in decoder._modules), None)
    if norm is not None:
        replace[norm] = frozen(copy.deepcopy(decoder._modules[norm]))
    outer = {_child_name(policy, decoder): _with_modules(decoder, replace)}
    head, embeddings = policy.get_output_embeddings(), policy.get_input_embeddings()
    if head is not None and head.weight is not embeddings.weight:
        outer[_child_name(policy, head)] = frozen(copy.deepcopy(head))
    return _with_modules(policy, outer)  # its shared modules follow the policy's train/eval mode
