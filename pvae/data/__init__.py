"""Data: the datasets pvae knows by name (where they are found, how they are binarized) and the
procedural shapes with known factors."""

from pvae.data.datasets import (
                                 BINARIZE,
                                 EMBEDDED,
                                 Data,
                                 as_tensors,
                                 binarize,
                                 load_dataset,
                                 read_amat,
                                 read_arrays,
                                 read_idx,
                                 semi_supervised,
)

__all__ = ["BINARIZE", "EMBEDDED", "Data", "as_tensors", "binarize", "load_dataset", "read_amat", "read_arrays",
           "read_idx", "semi_supervised"]
