"""Training on several devices: `torchrun --nproc_per_node N -m trainer run CONFIG`.

A launcher (torchrun, `accelerate launch`, SLURM's srun with the same variables) starts one
process per device and tells each who it is through RANK / WORLD_SIZE / LOCAL_RANK; without them
(or with WORLD_SIZE=1) everything here is a no-op and the run is a plain single-process one.

Decisions, so that a multi-process run is the single-process run with a bigger batch:
- `batch_size` is per device (as the original scripts' `per_device_train_batch_size`); one
  optimizer step sees batch_size x world_size x gradient_accumulation_steps rows.
- Every rank builds the same epoch plan (same seed): the global batches are cut from the
  length-grouped order, and rank r takes rows r, r+N, r+2N, ... of each, so every rank gets rows
  of about the same length and the same number of batches (DDP needs both).
- DDP averages gradients over ranks; with equal rows per rank that is the gradient of the
  global batch. A last global batch with fewer rows than ranks is left out (logged).
- Evaluation, best-model selection, checkpoints and every output file are rank 0's job; the
  others wait at a barrier. Validation sets are small next to training, so sharding eval would
  save seconds and add a gather; the train loss is all-reduced so rank 0 logs the global mean.
- `distributed: fsdp` shards parameters, gradients and optimizer state over the ranks
  (FSDP2 `fully_shard`, per transformer block then the root) for models that do not fit one
  device; the full weights are gathered to rank 0 only to save.

torch.distributed talks to the other ranks from C++ (TCPStore, gloo, NCCL), not through Python's
socket module, so the network guard does not stand in its way; the rendezvous address is the one
the launcher was given (loopback for one node).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from trainer.errors import TrainerError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed
    mode: str = "none"  # "none" | "ddp" | "fsdp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()


def launch_env(environ: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) the launcher set; (0, 1, 0) when none did."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise TrainerError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e}): launch with torchrun or accelerate launch") from e
    if world < 1 or not 0 <= rank < world:
        raise TrainerError(f"RANK {rank} is not within WORLD_SIZE {world}: launch with torchrun or accelerate launch")
    return rank, world, local


def init(distributed: str, *, cuda: bool) -> DistEnv:
    """Join the process group the launcher describes; returns SINGLE when there is none.

    `distributed` is the config value: auto/ddp (DDP when launched with several processes) or fsdp.
    """
    rank, world, local = launch_env()
    if world == 1:
        return SINGLE
    import torch.distributed as td  # deferred: seconds to import; only the work that needs it pays

    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)  # before init: NCCL binds each process to its own GPU
    if not td.is_initialized():
        td.init_process_group(backend=backend)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # N ranks x tokenizer threads oversubscribe cores
    return DistEnv(rank=rank, world_size=world, local_rank=local, backend=backend, mode="fsdp" if distributed == "fsdp" else "ddp")


def device(env: DistEnv, *, cuda: bool) -> torch.device:
    if not cuda:
        return torch.device("cpu")
    return torch.device("cuda", env.local_rank) if env.enabled else torch.device("cuda")


def shard_batches(batches: Sequence[Sequence[int]], env: DistEnv) -> list[list[int]]:
    """This rank's part of each global batch: rows rank, rank+N, ... A global batch smaller than
    the number of ranks would leave a rank with nothing to do (and DDP waiting): it is dropped."""
    if not env.enabled:
        return [list(b) for b in batches]
    return [list(b[env.rank :: env.world_size]) for b in batches if len(b) >= env.world_size]


def wrap(model: torch.nn.Module, env: DistEnv, *, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP around the model (identity for a single process)."""
    if not env.enabled:
        return model
    if env.mode == "fsdp":
        return _fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel  # deferred: seconds to import; only the work that needs it pays

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _fully_shard(model: torch.nn.Module) -> torch.nn.Module:
    try:
        from torch.distributed.fsdp import fully_shard  # deferred: seconds to import; only the work that needs it pays
    except ImportError:
        try:  # torch 2.4-2.5 kept FSDP2 under _composable
            from torch.distributed._composable.fsdp import fully_shard  # deferred: seconds to import; only the work that needs it pays
        except ImportError as e:
            raise TrainerError("distributed: fsdp needs torch >= 2.4 (FSDP2 fully_shard): upgrade torch or use distributed: ddp") from e
    blocks = _transformer_blocks(model)
    for block in blocks:
        fully_shard(block)  # one all-gather per block keeps peak memory at one block's full weights
    fully_shard(model)
    return model


def _transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated layers (the largest ModuleList), the unit FSDP gathers at a time."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))) if lists else []


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place and has no wrapper)."""
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: torch.nn.Module, env: DistEnv) -> dict[str, torch.Tensor] | None:
    """FSDP: the unsharded weights on rank 0's CPU (a collective: every rank must call it)."""
    if env.mode != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # deferred: seconds to import; only the work that needs it pays

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, *, skip: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on micro-batches that only accumulate."""
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if not env.enabled:
        return value
    import torch.distributed as td  # deferred: seconds to import; only the work that needs it pays

    out = value.detach().clone()
    td.all_reduce(out, op=td.ReduceOp.SUM)
    return out / env.world_size


def all_reduce_min(value: int, env: DistEnv, *, device: torch.device) -> int:
    """The smallest value over the ranks: a choice every rank must agree on (a micro-batch size
    from free memory) is made from the tightest rank's number."""
    if not env.enabled:
        return value
    import torch.distributed as td  # deferred: seconds to import; only the work that needs it pays

    t = torch.tensor([value], dtype=torch.int64, device=device)
    td.all_reduce(t, op=td.ReduceOp.MIN)
    return int(t.item())


def barrier(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as td  # deferred: seconds to import; only the work that needs it pays

        td.barrier()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's value of obj on every rank (e.g. whether an epoch improved the best model)."""
    if not env.enabled:
        return obj
    import torch.distributed as td  # deferred: seconds to import; only the work that needs it pays

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as td  # deferred: seconds to import; only the work that needs it pays

        if td.is_initialized():
            # every rank tears down together: a rank that destroyed its gloo group and exited while
            # rank 0 was still writing outputs sometimes aborted in gloo's teardown ("terminate
            # called without an active exception", exit -6; about 1 run in 10 on 2 CPU processes).
            # If rank 0 fails instead, torchrun stops the ranks waiting here.
            td.barrier()
            td.destroy_process_group()
