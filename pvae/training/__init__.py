"""Training a model/guide pair: `fit` and its settings, the epoch loop, checkpoints and run
folders, faults and signals, callbacks, data-parallel training, the comparison of objectives and
the VQ-VAE's code prior."""
