import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_defaults():
    """Pyro validation on in tests (off in training loops); fixed seeds; a clean param store."""
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    torch.set_num_threads(2)
    yield
