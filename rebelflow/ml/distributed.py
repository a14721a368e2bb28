"""Between ranks of a multi-process launch: who this process is, broadcasts, gathers, reductions, and
ending the process group cleanly."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from rebelflow.ml.models import device


def world_size() -> int:
    """Processes of this launch (accelerate launch sets WORLD_SIZE); 1 in process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Ranks:
    """This process's place in a multi-process launch."""

    index: int
    count: int

    @property
    def main(self) -> bool:
        return self.index == 0


def join_ranks() -> Ranks | None:
    """For a stage without an optimizer (score): None in a single process, else join the launch's process
    group (NCCL with this rank's GPU, gloo without GPUs)."""
    if world_size() == 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def from_main(ranks: Ranks | None, value: Any) -> Any:
    """The main process's value on every rank (the value itself in a single process)."""
    if ranks is None:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_lists(ranks: Ranks, mine: list[Any]) -> list[list[Any]]:
    """Every rank's list, in rank order, on every rank."""
    parts: list[Any] = [None] * ranks.count
    torch.distributed.all_gather_object(parts, mine)
    return parts


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def mean_over_ranks(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(tensor, "mean").tolist(), strict=True))


def sum_over_ranks(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device), "sum").item()


def finish_distributed() -> None:
    """End the process group of a multi-process launch (without it, gloo runs sometimes abort at exit)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def zero_stage(accelerator) -> int | None:
    plugin = accelerator.state.deepspeed_plugin
    return None if plugin is None else int(plugin.zero_stage)


def make_accelerator(accumulation_steps: int, micro_batch: int, max_grad_norm: float | None = None):
    """An Accelerator for this launch: DeepSpeed ZeRO when the launch config asks for it (its micro-batch
    size set here, since no dataloader is prepared), gloo between ranks when there is no GPU. DeepSpeed clips
    gradients itself: at `max_grad_norm` (none when None), as the other launches do (accelerate would fill
    the shipped configs' "auto" with 1.0)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs

    # A second trainer in one process (tests, in-process launches) must not inherit the first one's state.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    plugin = GradientAccumulationPlugin(num_steps=accumulation_steps, sync_with_dataloader=False)
    gpu = torch.cuda.is_available()
    handlers = [InitProcessGroupKwargs(backend="gloo")] if not gpu and world_size() > 1 else []
    accelerator = Accelerator(
        gradient_accumulation_plugin=plugin, kwargs_handlers=handlers, cpu=not gpu and not using_deepspeed()
    )
    if accelerator.state.deepspeed_plugin is not None:
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config["train_micro_batch_size_per_gpu"] = micro_batch
        config["gradient_accumulation_steps"] = accumulation_steps  # a config's own number would win otherwise
        if config.get("gradient_clipping", "auto") == "auto":
            config["gradient_clipping"] = float(max_grad_norm or 0.0)
    return accelerator


@contextmanager
def full_weights(accelerator, model, params: list | None = None):
    """Parameters whole on this rank for the duration (ZeRO-3 partitions them): all of them for generation,
    whose steps differ in number between ranks, or `params` (say, those pushed into an engine). Under ZeRO-3
    the gathered module runs without DeepSpeed's fetch/release hooks (they would re-partition each layer after
    its forward and gather it again collectively, step by step); they are put back afterwards. Nothing to do
    otherwise. Relies on DeepSpeed 0.19's hook bookkeeping (constraints.txt pins it)."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed
    from deepspeed.runtime.zero import parameter_offload

    engine = accelerator.deepspeed_engine_wrapped.engine
    offload = getattr(engine.optimizer, "parameter_offload", None) or engine.optimizer
    if not all(hasattr(offload, name) for name in ("_remove_module_hooks", "setup_zero_stage3_hooks", "forward_hooks")):
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__} keeps ZeRO-3's module hooks differently from 0.19, "
                           "which rebelflow's gathered generation relies on: install deepspeed 0.19.x.")
    with deepspeed.zero.GatheredParameters(list(params if params is not None else model.parameters()), modifier_rank=None):
        offload._remove_module_hooks()
        offload.forward_hooks, offload.backward_hooks = [], []
        for p in model.parameters():
            p.ds_active_sub_modules.clear()
        try:
            yield
        finally:
            depth = len(parameter_offload.FWD_MODULE_STACK)
            offload.setup_zero_stage3_hooks()
            del parameter_offload.FWD_MODULE_STACK[depth:]  # it pushes the root module again each time
