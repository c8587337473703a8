import os
import tempfile

import pyro
import pytest
import torch

# pvae's compile records (pvae.util.cache) in a folder of this test session's own: the suite neither
# reads what earlier runs on this machine left nor leaves anything in ~/.cache
os.environ.setdefault("PVAE_CACHE_DIR", tempfile.mkdtemp(prefix="pvae-test-cache-"))


@pytest.fixture(autouse=True)
def _pyro_defaults():
    """Pyro validation on in tests (off in training loops); fixed seeds; a clean param store."""
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    torch.set_num_threads(2)
    yield
