"""Everything that touches torch.distributed: process groups, reductions, DDP, FSDP2, activation
checkpointing, sync BN, sharded prototypes."""
from .env import (DistEnv, all_reduce_max, all_reduce_sum, any_rank, barrier, broadcast_object, destroy,
                  init_distributed, reduce_fns)
from .parallelize import (ParallelPlan, full_state_dict, full_tensor, local_numel, parallelize, plan_parallelism,
                          unwrap)
from .prototypes import shard_reductions

__all__ = ["DistEnv", "ParallelPlan", "all_reduce_max", "all_reduce_sum", "any_rank", "barrier", "broadcast_object",
           "destroy", "full_state_dict", "full_tensor", "init_distributed", "local_numel", "parallelize",
           "plan_parallelism", "reduce_fns", "shard_reductions", "unwrap"]
