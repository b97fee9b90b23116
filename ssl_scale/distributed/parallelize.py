"""Applies synchronised batch norm, activation checkpointing, data parallelism (DDP or FSDP2
`fully_shard`), mixed precision, sharded prototypes, meta-device materialisation, channels_last and
torch.compile to an unmodified model. Models, losses and data code never do any of this themselves."""
from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from ssl_scale.config.loader import ConfigError
from ssl_scale.models.init import init_weights
from ssl_scale.models.trunks import trunk_blocks, trunk_stages

from .env import DistEnv
from .prototypes import shard_prototype_layers
from .syncbn import convert_sync_batchnorm, new_bn_groups

log = logging.getLogger(__name__)
NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ParallelPlan:
    """What `parallelize` does, decided once from the recipe and the world size.

    fsdp: shard with FSDP2 (parallel.mode=fsdp on more than one process; one process trains unsharded).
    fsdp_bf16: bf16 through FSDP2's mixed-precision policy (fp32 gradient reduction) instead of autocast.
    """

    precision_dtype: Optional[torch.dtype] = None  # train.precision as a dtype (None: fp32)
    fsdp: bool = False
    fsdp_unit: str = "block"
    fsdp_max_unit_params: int = 0
    reshard_after_forward: bool = True
    fsdp_bf16: bool = False
    fp32_norms_and_prototypes: bool = True
    activation_checkpointing: str = "none"
    ac_every: int = 1
    ac_stages: Tuple[int, ...] = ()
    shard_prototypes: bool = False
    meta_init: bool = False
    sync_bn: str = "global"
    sync_bn_group_size: int = 0
    channels_last: bool = False
    compile_trunk: bool = False
    zero_init_residual: bool = False

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """The dtype the trainer autocasts to (None: fp32, or FSDP applies bf16 itself)."""
        return None if self.fsdp_bf16 else self.precision_dtype


FSDP_ON_CPU_SINCE = (2, 9)  # FSDP2 on CPU: 2.6 cannot gather (no CPU stream events); 2.7 and 2.8 train, but not to one process's weights
SPLIT_CHECKPOINTED_SINCE = (2, 11)  # FSDP2 units nested in a checkpointed block: older torch recomputes with sharded weights


def torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def plan_parallelism(cfg, env: DistEnv) -> ParallelPlan:
    """The plan for a resolved recipe (`parallel.*`, `train.*`) on this run's processes."""
    p, t = cfg.parallel, cfg.train
    fsdp = p.mode == "fsdp" and env.distributed
    if fsdp and env.device.type == "cpu" and torch_version() < FSDP_ON_CPU_SINCE:
        raise ConfigError(f"'parallel.mode': fsdp on CPU processes needs torch >= "
                          f"{'.'.join(map(str, FSDP_ON_CPU_SINCE))} (this is {torch.__version__}); use "
                          f"parallel.mode=ddp, GPUs, or a newer torch")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
    return ParallelPlan(precision_dtype=dtype, fsdp=fsdp, fsdp_unit=p.fsdp_unit, fsdp_max_unit_params=p.fsdp_max_unit_params,
                        reshard_after_forward=p.reshard_after_forward,
                        fsdp_bf16=fsdp and dtype == torch.bfloat16, fp32_norms_and_prototypes=p.fp32_norms_and_prototypes,
                        activation_checkpointing=p.activation_checkpointing, ac_every=p.ac_every,
                        ac_stages=tuple(p.ac_stages),
                        shard_prototypes=fsdp and p.shard_prototypes, meta_init=p.meta_init, sync_bn=t.sync_bn,
                        sync_bn_group_size=t.sync_bn_group_size, channels_last=t.channels_last,
                        compile_trunk=t.compile, zero_init_residual=cfg.model.zero_init_residual)


def apply_sync_bn(model: nn.Module, mode: str, group_size: int, env: DistEnv) -> nn.Module:
    if mode == "none" or not env.distributed:
        return model
    group = new_bn_groups(group_size) if mode == "group" else None
    log.info("synchronised batch norm over %s", f"groups of {group_size}" if group is not None else "all ranks")
    return convert_sync_batchnorm(model, group)


def _keep_running_stats(block: nn.Module):
    """Context for the recomputation of a checkpointed block: its norm layers must not count the
    batch twice in their running statistics (momentum 0, then the counters restored)."""
    norms = [m for m in block.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]

    @contextlib.contextmanager
    def frozen():
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
        for m in norms:
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, (momentum, count) in zip(norms, saved):
                m.momentum = momentum
                m.num_batches_tracked.copy_(count)

    return lambda: (contextlib.nullcontext(), frozen())


def apply_ac(trunk: nn.Module, every: int = 1, stages: Sequence[int] = ()) -> int:
    """Wraps every `every`-th residual block of `trunk` (counted over all blocks), in the stages listed in
    `stages` (0 = the first; empty = all), so that its activations are recomputed in backward instead of
    stored (non-reentrant torch.utils.checkpoint). Returns the number wrapped."""
    all_stages = trunk_stages(trunk)
    bad = [s for s in stages if not 0 <= s < len(all_stages)]
    if bad:
        raise ConfigError(f"'parallel.ac_stages': stage {bad[0]} does not exist; this trunk has stages "
                          f"0-{len(all_stages) - 1}")
    index = wrapped = 0
    for s, stage in enumerate(all_stages):
        for name, block in list(stage.named_children()):
            chosen = index % every == 0 and (not stages or s in stages)
            if chosen and not isinstance(block, CheckpointWrapper):
                setattr(stage, name, checkpoint_wrapper(block, checkpoint_fn=checkpoint, use_reentrant=False,
                                                        context_fn=_keep_running_stats(block)))
                wrapped += 1
            index += 1
    return wrapped


def _units_to_split(units: List[nn.Module], max_params: int) -> List[nn.Module]:
    """The units larger than max_params (0: none), which get one FSDP unit per layer; not the checkpointed
    ones when this torch cannot gather units nested in a checkpointed block (said once)."""
    large = [u for u in units if max_params and sum(p.numel() for p in u.parameters()) > max_params]
    if torch_version() >= SPLIT_CHECKPOINTED_SINCE:
        return large
    split = [u for u in large if not any(isinstance(m, CheckpointWrapper) for m in u.modules())]
    if len(split) < len(large):
        log.warning("parallel.fsdp_max_unit_params: %d checkpointed block(s) over %d parameters stay one FSDP unit "
                    "each: torch %s cannot gather units nested in a checkpointed block (torch >= %s can)",
                    len(large) - len(split), max_params, torch.__version__, ".".join(map(str, SPLIT_CHECKPOINTED_SINCE)))
    return split


def apply_fsdp(model: nn.Module, env: DistEnv, plan: ParallelPlan) -> None:
    """FSDP2 in place: one unit per block (or stage) of the trunk (one per convolution or linear layer of
    a block larger than fsdp_max_unit_params), one per linear layer of the head's projection, the rest
    (stem, head norms) in the root unit; norm layers and prototypes in fp32 units of their own under bf16."""
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mp = bf16 if plan.fsdp_bf16 else MixedPrecisionPolicy()
    shard = functools.partial(fully_shard, mesh=mesh, reshard_after_forward=plan.reshard_after_forward)
    head = model.head
    sharded_protos = None
    if plan.shard_prototypes:
        shard_prototype_layers(head, mesh)
        sharded_protos, head.prototypes = head.prototypes, nn.ModuleList()  # kept out of every FSDP unit
    if plan.fsdp_bf16 and plan.fp32_norms_and_prototypes:
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, output_dtype=torch.bfloat16)
        for m in model.modules():
            if isinstance(m, NORMS) and any(True for _ in m.parameters(recurse=False)):
                shard(m, mp_policy=fp32)
        for layer in head.prototypes:  # scores leave in fp32 for Sinkhorn and the softmax
            shard(layer, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32))
    units = trunk_blocks(model.trunk) if plan.fsdp_unit == "block" else trunk_stages(model.trunk)
    split = {id(u) for u in _units_to_split(units, plan.fsdp_max_unit_params)}
    for unit in units:
        if id(unit) in split:
            for layer in unit.modules():  # e.g. SEER 256GF's last block: 251 M parameters, its largest layer 109 M
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    shard(layer, mp_policy=mp)
        shard(unit, mp_policy=mp)  # a block's checkpoint wrapper when it has one (its norms, when split)
    for layer in head.projection.modules():  # each its own unit: SEER's MLP is 10444 wide (2 x 109 M weights)
        if isinstance(layer, nn.Linear):
            shard(layer, mp_policy=mp)
    shard(model, mp_policy=mp)
    if sharded_protos is not None:
        head.prototypes = sharded_protos


def materialize(model: nn.Module, device: torch.device, rank: int, zero_init_residual: bool) -> None:
    """Allocates the (meta) parameters of this rank only and initialises them. Each rank draws its
    shards from its own seed (the global RNG state is restored afterwards)."""
    model.to_empty(device=device)
    state = torch.get_rng_state()
    torch.manual_seed(torch.initial_seed() + 1000003 * rank)
    with torch.no_grad():
        init_weights(model, zero_init_residual)
        if hasattr(model, "head") and hasattr(model.head, "normalize_prototypes"):
            model.head.normalize_prototypes()
    torch.set_rng_state(state)


def parallelize(model: nn.Module, env: DistEnv, plan: ParallelPlan) -> nn.Module:
    """Returns the module to train: the model itself under FSDP (changed in place), DDP-wrapped for
    data parallelism, or the model alone on one process; `unwrap` gives the model back."""
    model = apply_sync_bn(model, plan.sync_bn, plan.sync_bn_group_size, env)
    if plan.activation_checkpointing == "block":
        n = apply_ac(model.trunk, plan.ac_every, plan.ac_stages)
        log.info("activation checkpointing on %d residual blocks (every %d%s)", n, plan.ac_every,
                 f", stages {list(plan.ac_stages)}" if plan.ac_stages else "")
    on_meta = any(p.is_meta for p in model.parameters())
    if not on_meta:
        model.to(env.device)
    if plan.fsdp:
        apply_fsdp(model, env, plan)
        log.info("FSDP2 over %d ranks, one unit per %s%s%s", env.world_size, plan.fsdp_unit,
                 ", bf16 parameters with fp32 gradient reduction" if plan.fsdp_bf16 else "",
                 ", prototypes split by rows" if plan.shard_prototypes else "")
    if on_meta:
        materialize(model, env.device, env.rank if plan.fsdp else 0, plan.zero_init_residual)
    if plan.channels_last and not plan.fsdp:  # FSDP2 keeps flat shards: only the inputs go channels_last
        model.to(memory_format=torch.channels_last)
    if plan.compile_trunk and hasattr(model, "trunk"):
        model.trunk.compile()  # in place: parameter names (and checkpoints) stay unchanged
    if env.distributed and not plan.fsdp:
        ids = [env.device.index] if env.device.type == "cuda" else None
        # Buffers (BN running stats) are kept equal by synchronised BN; no per-step broadcast needed.
        model = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded (DTensor) parameter; plain tensors pass through."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: nn.Module) -> Dict[str, Any]:
    """The model's whole (unsharded, CPU) state dict on every rank, wrapper prefixes removed."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))



def local_numel(model: nn.Module) -> Dict[str, int]:
    """Elements of parameters this rank stores (its shards for DTensors), and of their gradients."""
    def size(t: torch.Tensor) -> int:
        return t.to_local().numel() if isinstance(t, DTensor) else t.numel()

    params: List[torch.Tensor] = list(model.parameters())
    return {"params": sum(size(p) for p in params),
            "grads": sum(size(p.grad) for p in params if p.grad is not None)}
