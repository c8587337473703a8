import os
import tempfile

import pyro
import pytest
import torch

# pvae's compile records (pvae.util.cache) in a folder of this test session's own: the suite neither
# reads what earlier runs on this machine left nor leaves anything in ~/.cache
os.environ.setdefault("PVAE_CACHE_DIR", tempfile.mkdtemp(prefix="pvae-test-cache-"))
# inductor's caches in one folder for every test (chosen here, so pvae leaves them there: a test with
# a fresh PVAE_CACHE_DIR would otherwise rebuild inductor's 150 MB precompiled header, 7-8 s)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "pvae-tests-inductor"))


@pytest.fixture(autouse=True)
def _pyro_defaults():
    """Pyro validation on in tests (off in training loops); fixed seeds; a clean param store."""
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    torch.set_num_threads(2)
    yield
