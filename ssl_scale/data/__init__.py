"""Data pipeline: image sources, robust decoding, multi-crop transforms, resumable sharded loading."""
from ssl_scale.data.decode import BadSample, DataError, load_image
from ssl_scale.data.loader import BadDataCounter, build_train_loader
from ssl_scale.data.multicrop import TRANSFORMS, CropSpec, EvalTransform, MultiCropTransform
from ssl_scale.data.sampler import ResumableShardSampler
from ssl_scale.data.sources import DATASETS, EmbeddedMNIST, FolderDataset
from ssl_scale.data.filelist import FileListDataset  # registers "filelist"
from ssl_scale.data.shards import ShardDataset  # registers "shards"
from ssl_scale.data.synthetic import SyntheticDataset  # registers "synthetic"

__all__ = [
    "DATASETS", "TRANSFORMS", "DataError", "BadSample", "load_image", "FolderDataset", "EmbeddedMNIST",
    "CropSpec", "MultiCropTransform", "EvalTransform", "ResumableShardSampler", "build_train_loader",
    "BadDataCounter", "FileListDataset", "ShardDataset", "SyntheticDataset",
]
