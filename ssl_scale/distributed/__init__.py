"""Everything that touches torch.distributed: process groups, reductions, DDP, sync BN."""
from .env import DistEnv, all_reduce_max, any_rank, all_reduce_sum, barrier, broadcast_object, destroy, init_distributed, reduce_fns
from .parallelize import parallelize, unwrap

__all__ = ["DistEnv", "all_reduce_max", "any_rank", "all_reduce_sum", "barrier", "broadcast_object", "destroy",
           "init_distributed", "parallelize", "reduce_fns", "unwrap"]
