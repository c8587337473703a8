"""How a Pyro program is scored and fit: the program analysis (data plate, particles, global
latents), per-datapoint log-weights, the objectives (one family per file, the bound in each
docstring), the compiled step, importance sampling, AIS and BDMC."""
