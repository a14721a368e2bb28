"""Models: loading a causal LM in a dtype, choosing what trains (all, the top k layers, LoRA), this
process's device, the hardware fingerprint of logprobs, saving a trained policy as an HF folder, and fp32
master copies of 16-bit trained weights."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from rebelflow.config.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device() -> torch.device:
    """This process's device: under a multi-GPU launch its own GPU (LOCAL_RANK), else cuda:0 or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def hardware_fingerprint(dtype: str, attn: str) -> str:
    """What makes logprobs differ between machines: torch, device kind, dtype, attention kernel."""
    kind = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"torch={torch.__version__};device={kind};dtype={dtype};attn={attn}"


def load_causal_lm(path: str, dtype: str, attn: str = "sdpa", revision: str | None = None):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=DTYPES[dtype], attn_implementation=attn)


def set_trainable(model, trainable: str | int, lora=None):
    """Train all parameters, only the top k decoder layers (with the final norm, and the LM head when it is
    not tied to the embeddings, as the papers' chat scripts freeze only the layers below and the
    embeddings), or LoRA adapters (peft; `lora` holds r, alpha, dropout and target modules). Returns (the
    model to train, the number of its trainable parameters)."""
    if trainable == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(lora))
        return model, sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == "all":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        layers = model.get_decoder().layers
        if trainable > len(layers):
            raise ConfigError(f"[train.trainable] {trainable} top layers asked, the model has {len(layers)}.")
        for p in model.parameters():
            p.requires_grad_(False)
        embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
        norm = next((getattr(model.get_decoder(), n) for n in ("norm", "final_layer_norm", "ln_f")
                     if hasattr(model.get_decoder(), n)), None)
        for module in [*layers[-trainable:], *([norm] if norm is not None else []), model.get_output_embeddings()]:
            for p in module.parameters():
                if id(p) not in embeddings:  # a tied LM head is the embedding matrix: it stays frozen
                    p.requires_grad_(True)
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


def engine_weights(model, trainable: str | int) -> list[tuple]:
    """What an inference engine holding the starting weights needs after an update, under the base model's
    checkpoint names: the parameters that train (top k layers, norm, head), each LoRA-adapted weight with
    its adapters merged in (computed, not merged in place, so the trained weights never drift), or all."""
    if trainable == "lora":
        from peft.tuners.lora import LoraLayer

        out = []
        for name, module in model.get_base_model().named_modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                out.append((f"{name}.weight", (weight + delta).detach()))
        return out
    return [(n, p.detach()) for n, p in model.named_parameters() if trainable == "all" or p.requires_grad]


def peft_config(lora, task_type: str | None = "CAUSAL_LM"):
    """peft's LoRA settings; task_type None for a bare backbone (a PPO value model's)."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                      task_type=task_type)


def save_policy(accelerator, model, state: dict, tokenizer, out_dir: Path, lora_base: tuple | None = None) -> None:
    """An HF folder (safetensors, config, generation config, tokenizer with chat template) that
    `from_pretrained` and vLLM load directly. For LoRA (`lora_base` = (base model path, dtype, lora
    settings)) the adapters are merged into a fresh copy of the base model first."""
    if lora_base is not None:
        from peft import get_peft_model

        path, dtype, lora = lora_base
        merged = get_peft_model(load_causal_lm(path, dtype), peft_config(lora))
        merged.load_state_dict(state)
        merged.merge_and_unload().save_pretrained(out_dir, safe_serialization=True)
    else:
        unwrapped = accelerator.unwrap_model(model)
        tied = getattr(unwrapped, "all_tied_weights_keys", None) or {}
        if getattr(unwrapped.config, "tie_word_embeddings", False):  # a gathered state lists tied weights twice
            state = {k: v for k, v in state.items() if k not in tied}
        unwrapped.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


class MasterWeights(torch.nn.Module):
    """fp32 copies of trainable parameters held in bf16/fp16: the optimizer steps the copies and the model
    gets them rounded back after every step. Stepped in place, an Adam step of about lr (1e-7 to 3e-6 in
    the papers' settings) is far below bf16's resolution at the weights' scale and would mostly round away.
    Saved with the checkpoints, so a resumed round keeps the full-precision weights."""

    def __init__(self, params: list[torch.nn.Parameter]):
        super().__init__()
        self.params = params
        self.copies = torch.nn.ParameterList([torch.nn.Parameter(p.detach().float().clone()) for p in params])

    def take_grads(self) -> None:
        for copy, p in zip(self.copies, self.params, strict=True):
            copy.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def give_weights(self) -> None:
        for copy, p in zip(self.copies, self.params, strict=True):
            p.copy_(copy)

    @classmethod
    def where_needed(cls, model, deepspeed: bool) -> MasterWeights | None:
        """Copies of the model's trainable parameters when some are 16-bit; None when all are fp32, or under
        DeepSpeed, which keeps fp32 copies of its own."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        low = any(p.dtype != torch.float32 for p in trainable)
        return cls(trainable) if low and not deepspeed else None


def bf16_native() -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with x86
    AVX512-BF16/AMX or Arm's BF16 extension. Without them torch emulates bf16 matmuls on CPU, measured about
    12× slower than fp32 on a 2-core AMD EPYC."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


@cache
def cpu_has_bf16() -> bool:
    """This CPU's flags (/proc/cpuinfo), or on macOS the kernel's report of Arm's BF16 extension (M2 on)."""
    import platform
    import subprocess

    if platform.system() == "Darwin":
        try:
            got = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        except OSError:
            return False
        return got.stdout.strip() == "1"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {word for line in text.splitlines() if line.lower().startswith(("flags", "features"))
             for word in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
