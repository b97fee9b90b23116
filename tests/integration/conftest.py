import pytest

from tests.helpers import SHARED


@pytest.fixture
def cifar_mini():
    root = SHARED / "cifar10-mini"
    if not (root / "train").is_dir():
        pytest.skip(f"shared photos not found at {root} (set SSL_SCALE_SHARED_DATA)")
    return root
