"""The weighted kNN classifier agrees with scikit-learn's KNeighborsClassifier on the same features."""
import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier

from ssl_scale.benchmarks.knn import knn_accuracy, knn_predict


def _blobs(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = centers[y] + 0.9 * torch.randn(n, d, generator=g)
    return x, y


def test_knn_matches_sklearn_with_the_same_weighting():
    xtr, ytr = _blobs(600, 16, 5, 0)
    xte, yte = _blobs(300, 16, 5, 1)
    k, t = 20, 0.07
    ours = knn_predict(xtr, ytr, xte, k=k, temperature=t).argmax(1).numpy()
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1.0 - d) / t)).fit(xtr.numpy(), ytr.numpy())
    theirs = ref.predict(xte.numpy())
    assert (ours == theirs).mean() >= 0.995  # only exact vote ties may differ
    acc = knn_accuracy(xtr, ytr, xte, yte, k=k, temperature=t)
    assert abs(acc["top1"] - (theirs == yte.numpy()).mean()) <= 0.005
    assert acc["top5"] >= acc["top1"]


def test_knn_top5_counts_label_in_five_best_classes():
    xtr = torch.eye(6)
    ytr = torch.arange(6)
    xte = torch.tensor([[1.0, 0.9, 0.8, 0.7, 0.6, 0.0]])
    scores = knn_predict(xtr, ytr, xte, k=6, temperature=1.0)
    assert scores.argmax().item() == 0
    assert knn_accuracy(xtr, ytr, xte, torch.tensor([4]), k=6, temperature=1.0) == {"top1": 0.0, "top5": 1.0}
    assert knn_accuracy(xtr, ytr, xte, torch.tensor([5]), k=6, temperature=1.0)["top5"] == 0.0


def test_feature_extraction_names_an_unusable_image(tmp_path):
    import pytest
    from PIL import Image

    from ssl_scale.benchmarks.features import extract_features
    from ssl_scale.data import DATASETS, TRANSFORMS, DataError

    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"")
    ds = DATASETS.get("folder")(tmp_path)
    with pytest.raises(DataError, match="broken.jpg.*zero_bytes"):
        extract_features(torch.nn.Flatten(), ds, TRANSFORMS.get("eval")(8), batch_size=2)
