"""Adapters from the config to the typed arguments of each registered builder (one place, no magic)."""
from __future__ import annotations

from ssl_scale.config.derived import draft_size
from ssl_scale.data import DATASETS, TRANSFORMS
from ssl_scale.data.multicrop import CropSpec
from ssl_scale.models import build_model


def build_dataset(src, draft=None):
    """`data.train` (or an eval section) -> a Dataset.

    Args:
        src: the source section (data.train).
        draft: (w, h) JPEG draft request for the image-file sources (``derived.draft_size``), or None.
    """
    if src.source == "folder":
        return DATASETS.get("folder")(src.path, draft_size=draft)
    if src.source == "embedded":
        return DATASETS.get("embedded")(split=src.split)
    if src.source == "filelist":
        return DATASETS.get("filelist")(src.path, root=src.root, draft_size=draft)
    if src.source == "shards":
        return DATASETS.get("shards")(src.path, manifest=src.manifest, draft_size=draft)
    if src.source == "synthetic":
        return DATASETS.get("synthetic")(num_samples=src.num_samples, image_size=src.image_size)
    return DATASETS.get(src.source)(src.path)


def build_train_dataset(data_cfg):
    """`data` -> the training Dataset, JPEGs decoded in draft mode per data.decode.draft and data.crops."""
    return build_dataset(data_cfg.train, draft=draft_size(data_cfg))


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
