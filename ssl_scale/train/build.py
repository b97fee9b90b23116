"""Adapters from the config to the typed arguments of each registered builder (one place, no magic)."""
from __future__ import annotations

from ssl_scale.data import DATASETS, TRANSFORMS
from ssl_scale.data.multicrop import CropSpec
from ssl_scale.models import build_model


def build_dataset(src):
    """`data.train` (or an eval section) -> a Dataset."""
    if src.source == "folder":
        return DATASETS.get("folder")(src.path)
    if src.source == "embedded":
        return DATASETS.get("embedded")(split=src.split)
    if src.source == "filelist":
        return DATASETS.get("filelist")(src.path, root=src.root)
    if src.source == "shards":
        return DATASETS.get("shards")(src.path, manifest=src.manifest)
    return DATASETS.get(src.source)(src.path)


def build_multicrop(data_cfg):
    a = data_cfg.augment
    crops = [CropSpec(c.size, c.count, c.scale[0], c.scale[1]) for c in data_cfg.crops]
    return TRANSFORMS.get("multicrop")(
        crops, flip_p=a.flip_p, color_jitter_p=a.color_jitter_p, jitter=tuple(a.jitter),
        grayscale_p=a.grayscale_p, blur_p=[c.blur_p for c in data_cfg.crops], solarize_p=a.solarize_p,
        mean=tuple(a.mean), std=tuple(a.std))


def build_ssl_model(model_cfg, device=None):
    h = model_cfg.head
    head_kwargs = dict(hidden_dims=list(h.hidden_dims), output_dim=h.output_dim, batch_norm=h.batch_norm,
                       num_prototypes=list(h.num_prototypes))
    return build_model(model_cfg.trunk, model_cfg.stem, head_kwargs, device=device,
                       zero_init_residual=model_cfg.zero_init_residual)
