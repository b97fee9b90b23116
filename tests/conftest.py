"""Fixtures shared by every test folder."""
import pytest
import torch

from tests.helpers import SHARED


@pytest.fixture
def cifar_mini():
    """../shared/data/cifar10-mini (train/ and test/ class folders of real photos), or a clear skip."""
    root = SHARED / "cifar10-mini"
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        pytest.skip(f"shared photos not found at {root} (set SSL_SCALE_SHARED_DATA)")
    return root


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (the CI machine has 2 cores; results do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
