"""The typed recipe schema: every key a recipe may set, its type, default and meaning."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# Keys whose values must be one of a fixed set, or a registered name. The loader checks them and
# names the valid choices; registry-backed keys are resolved lazily so this file imports nothing heavy.
CHOICES = {
    "train.precision": ["fp32", "bf16", "fp16"],
    "train.device": ["auto", "cpu", "cuda"],
    "train.sync_bn": ["none", "global", "group"],
    "model.stem": ["imagenet", "cifar"],
    "data.train.split": ["train", "test", "all"],
    "parallel.mode": ["ddp", "fsdp"],
    "parallel.fsdp_unit": ["block", "stage"],
    "parallel.activation_checkpointing": ["none", "block"],
    "launcher": ["slurm", "local"],
}
REGISTRY_KEYS = {
    "model.trunk": "trunk",
    "model.head.name": "head",
    "loss.name": "loss",
    "data.train.source": "dataset",
    "optim.name": "optimizer",
    "schedule.name": "schedule",
}


@dataclass
class RunConfig:
    dir: str = "runs/default"  # output folder: checkpoints, metrics.jsonl, TensorBoard, plots, config.yaml
    log_every: int = 10  # steps between metric lines (and the only host syncs of the step)
    checkpoint_every: int = 200  # steps between checkpoints (one is always written at the end)
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted
    progress: bool = True  # progress bar on rank 0
    tensorboard: bool = True
    resume: bool = True  # resume from the newest complete checkpoint in run.dir
    stop_check_every: int = 1  # steps between checks for a stop request (preemption signal): one tiny all-reduce each


@dataclass
class CropGroup:
    size: int = 224
    count: int = 2
    scale: List[float] = field(default_factory=lambda: [0.14, 1.0])  # RandomResizedCrop area range
    blur_p: float = 0.5  # Gaussian blur probability for this group


@dataclass
class AugmentConfig:
    flip_p: float = 0.5
    color_jitter_p: float = 0.8
    jitter: List[float] = field(default_factory=lambda: [0.8, 0.8, 0.8, 0.2])  # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2
    solarize_p: float = 0.0
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class SourceConfig:
    source: str = "embedded"  # registered dataset: folder | filelist | shards | synthetic | embedded
    path: Optional[str] = None  # folder; file list (.txt/.npy/.idx); shard pattern ('dir/s-{000000..000099}.tar', fsspec URLs, .txt list)
    split: str = "train"  # for source=embedded: train (4,000 digits) | test (1,000) | all
    shuffle: bool = True  # False keeps the listed order (files; shards and their samples)
    shuffle_buffer: int = 1000  # shards: samples per shuffled block, held encoded in memory per worker
    manifest: Optional[str] = None  # shards: per-shard counts (default: _shards.json beside the shards)
    root: Optional[str] = None  # filelist: folder relative paths start from (default: the list's folder)
    num_samples: int = 10000  # synthetic: images in the set (generated per index, no disk reads)
    image_size: int = 224  # synthetic: side of the square images, in pixels


@dataclass
class DecodeConfig:
    draft: bool = True  # JPEG draft mode: decode at 1/2, 1/4 or 1/8 size when that still covers the largest crop (data.crops) on both sides; false = always full size


@dataclass
class DataConfig:
    train: SourceConfig = field(default_factory=SourceConfig)
    batch_size: int = 64  # images per process per step
    num_workers: int = 2
    pin_memory: bool = True
    prefetch_factor: int = 2
    crops: List[CropGroup] = field(default_factory=lambda: [CropGroup(224, 2, [0.14, 1.0]), CropGroup(96, 6, [0.05, 0.14])])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    max_bad_fraction: float = 0.01  # stop when more than this share of samples could not be decoded


@dataclass
class HeadConfig:
    name: str = "swav"
    hidden_dims: List[int] = field(default_factory=lambda: [2048])
    output_dim: int = 128
    batch_norm: bool = True
    num_prototypes: List[int] = field(default_factory=lambda: [3000])  # one entry per prototype set


@dataclass
class ModelConfig:
    trunk: str = "resnet50"  # registered trunk (`ssl-scale list trunks`)
    stem: str = "imagenet"  # imagenet (7x7/2 + max-pool) | cifar (3x3/1, no max-pool) for 32-px images
    zero_init_residual: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class LossConfig:
    name: str = "swav"
    temperature: float = 0.1
    epsilon: float = 0.05  # Sinkhorn entropic regularisation
    sinkhorn_iterations: int = 3
    crops_for_assign: List[int] = field(default_factory=lambda: [0, 1])
    queue_length: int = 0  # over all processes (SwAV: 3,840 at batch 256); 0 = no queue. Rounded down to a multiple of the global batch, split evenly over the processes
    queue_start_epoch: int = 15
    use_float64: bool = False  # Sinkhorn in float64
    freeze_prototypes_iters: int = 313  # prototype gradients cancelled for this many steps


@dataclass
class OptimConfig:
    name: str = "lars_sgd"  # lars_sgd | sgd | adamw
    base_lr: float = 0.3  # per `reference_batch` images; scaled linearly with the global batch
    reference_batch: int = 256
    scale_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-6
    trust_coefficient: float = 0.001  # LARS eta
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    exclude_bias_and_norm: bool = True  # no weight decay / LARS adaptation for biases and norm layers
    clip_grad_norm: float = 0.0  # 0 = off
    in_backward: bool = False  # step each parameter as soon as its gradient is final and free it: no moment holds every gradient (parallel.mode=fsdp or one process; no clipping, no fp16)


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    warmup_epochs: float = 10.0
    start_lr: float = 0.0
    final_lr_fraction: float = 0.001  # cosine ends at peak * this


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: Optional[int] = 0  # stop after this many steps in total; 0 or null = no limit
    device: str = "auto"  # auto = cuda when available
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler, CUDA)
    channels_last: bool = False
    sync_bn: str = "global"  # none | global | group (sync_bn_group_size processes per group)
    sync_bn_group_size: int = 0
    compile: bool = False  # torch.compile the trunk
    deterministic: bool = False


@dataclass
class EvalConfig:
    knn_at_end: bool = False  # print kNN top-1 of the learned trunk next to the random-init trunk
    source: str = "embedded"  # dataset for that kNN: embedded (train/test splits) or folder
    train_path: Optional[str] = None  # for source=folder
    test_path: Optional[str] = None
    image_size: int = 28
    resize: Optional[int] = None
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256


@dataclass
class ParallelConfig:
    """How the model is spread over processes (applied by ssl_scale/distributed/parallelize.py)."""

    mode: str = "ddp"  # ddp: every rank holds the whole model | fsdp: FSDP2 fully_shard, each rank holds 1/N of parameters, gradients and optimizer state
    fsdp_unit: str = "block"  # fsdp: parameters gathered per residual block (block) or per stage (stage: fewer, larger collectives)
    fsdp_max_unit_params: int = 0  # fsdp: a block (or stage) with more parameters than this is split into one unit per convolution / linear layer, so no all-gather or reduce-scatter is larger than its largest layer (0 = never split)
    reshard_after_forward: bool = True  # fsdp: free gathered weights after forward and gather again in backward (less memory, more communication)
    fp32_norms_and_prototypes: bool = True  # fsdp with train.precision=bf16: norm layers and prototypes keep fp32 parameters and compute
    activation_checkpointing: str = "none"  # none | block: residual blocks recompute their activations in backward
    ac_every: int = 1  # with activation_checkpointing=block: checkpoint every k-th block (1 = every block)
    ac_stages: List[int] = field(default_factory=list)  # with activation_checkpointing=block: only the blocks of these stages (0 = the first; [] = all). Early stages hold most activations and cost the least to recompute
    shard_prototypes: bool = False  # fsdp: each rank keeps K/N prototype rows and scores the gathered batch against them
    meta_init: bool = False  # build the model on the meta device; each rank materialises and initialises only its shards


@dataclass
class SlurmConfig:
    """How `ssl-scale launch` submits the run (submitit); `ssl-scale train` ignores this section."""

    partition: Optional[str] = None  # null = the cluster's default partition
    nodes: int = 1
    tasks_per_node: int = 1  # one process per GPU (or per CPU process group on CPU)
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None  # per node; null = the partition's default
    timeout_min: int = 60  # time limit of each (re)start of the job, in minutes
    max_requeues: int = 5  # preemptions / time limits survived before the run stops with a message
    signal_delay_s: int = 120  # SLURM signals the job this long before killing it: time to checkpoint
    constraint: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    job_name: str = "ssl_scale"
    log_dir: Optional[str] = None  # submitit's folder (scripts, pickles, logs); null = <run.dir>/slurm
    setup: List[str] = field(default_factory=list)  # shell lines run before the job (module load, venv ...)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {exclusive: true}


@dataclass
class Config:
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    launcher: str = "slurm"  # `ssl-scale launch`: slurm (sbatch through submitit) | local (submitit's local executor)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
