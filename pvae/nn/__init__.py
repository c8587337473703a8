"""Building blocks of models, as ``torch.nn`` modules: encoder and decoder nets, likelihoods
p(x|z), guide families q(z|x), priors p(z) and the VQ-VAE's code prior (as pyro.nn is to Pyro)."""
