"""Datasets and where they are found.

Names (``load_dataset(name, split)``):

- ``"fashion-mnist-sample"`` (alias ``"sample"``): 5,000 training and 1,000 test images of
  Fashion-MNIST shipped inside the package (MIT license, see ``pvae/_embedded``). The default
  for ``pvae demo`` and the tests: it needs no download.
- ``"fashion-mnist"``, ``"mnist"``: 60,000 / 10,000 grey images from the idx files.
- ``"binarized-mnist"``: the static binarization of Larochelle & Murray (2011), 50k/10k/10k,
  from ``binarized_mnist_{train,valid,test}.amat``.
- ``"shapes"``: 6,912 procedural 32x32 shapes with known factors (shape, scale, rotation, x, y),
  made by code, no file (see ``pvae.data.shapes``); ``data.factors`` holds them, the labels are the shape.
- a path to a ``.npy`` / ``.npz`` file (arrays ``x`` [and ``y``], or ``train_x``/``test_x``...).

Files are looked for, in order, in ``data_dir`` (``--data-dir``), ``$PVAE_DATA``, the folder
of Debian's ``dataset-fashion-mnist`` package, and else downloaded with torchvision (or, for
``binarized-mnist``, from its authors' site) into ``data_dir`` or ``~/.cache/pvae``.

Images become float tensors in [0, 1] of shape ``(n, 1, 28, 28)``. Binarization:
``"none"``, ``"static"`` (one Bernoulli draw per pixel with a fixed seed), ``"threshold"``
(x > 0.5), or ``"dynamic"`` (a fresh draw every epoch in training; evaluation sees the
static draw, so test numbers are reproducible).
"""

from __future__ import annotations

import gzip
import os
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

EMBEDDED = "fashion-mnist-sample"
DATASETS = ("fashion-mnist-sample", "fashion-mnist", "mnist", "binarized-mnist", "shapes")
ALIASES = {"sample": EMBEDDED, "fmnist": "fashion-mnist", "binarized_mnist": "binarized-mnist"}
BINARIZE = ("none", "static", "dynamic", "threshold")
DEBIAN_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
TORCHVISION = {"fashion-mnist": ("FashionMNIST", "FashionMNIST"), "mnist": ("MNIST", "MNIST")}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
STATIC_SEED = 1234
CLASSES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(d) for d in range(10)),
}
CLASSES[EMBEDDED] = CLASSES["fashion-mnist"]
CLASSES["shapes"] = ("square", "ellipse", "triangle")


@dataclass
class Data(torch.utils.data.Dataset):
    """A dataset held as tensors: ``x`` (n, *x_shape) floats, ``y`` (n,) integer labels or None.

    ``binarize="dynamic"`` asks the trainer to draw x ~ Bernoulli(x) afresh every epoch;
    `eval_x` gives the fixed draw used for evaluation. ``classes`` names the labels
    (label i is ``classes[i]``) where the dataset has names for them; ``factors`` (n, K) holds the
    known factors of variation of a synthetic dataset (``"shapes"``), named by ``factor_names``.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    name: str = "tensor"
    binarize: str = "none"
    classes: tuple | None = None
    factors: torch.Tensor | None = None
    factor_names: tuple | None = None

    def __post_init__(self):
        """One line for what cannot be a dataset, before any work."""
        if isinstance(self.x, np.ndarray):
            self.x = torch.as_tensor(self.x)
        if not isinstance(self.x, torch.Tensor) or self.x.dim() < 2:
            what = f"shape {tuple(self.x.shape)}" if isinstance(self.x, torch.Tensor) else type(self.x).__name__
            raise (ValueError if isinstance(self.x, torch.Tensor) else TypeError)(
                f"Data's x must be a tensor or array with a leading datapoint dim, shape (n, *x_shape); got {what}")
        if self.binarize not in BINARIZE:
            raise ValueError(f"unknown binarization {self.binarize!r}; choose one of {list(BINARIZE)}")
        for what, v in (("labels", self.y), ("rows of factors", self.factors)):
            rows = None if v is None else (len(v) if torch.as_tensor(v).dim() else 0)
            if rows is not None and rows != len(self.x):
                raise ValueError(f"Data has {len(self.x)} datapoints but {rows} {what}")

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return (self.x[i], self.y[i]) if self.y is not None else self.x[i]

    def eval_x(self) -> torch.Tensor:
        if self.binarize == "dynamic":
            return binarize(self.x, "static")
        return self.x


def binarize(x: torch.Tensor, mode: str, seed: int = STATIC_SEED) -> torch.Tensor:
    """Binarize grey values in [0, 1]: ``"static"`` draws x ~ Bernoulli(x) once with ``seed``,
    ``"threshold"`` is x > 0.5; ``"none"`` and ``"dynamic"`` return x unchanged."""
    if mode not in BINARIZE:
        raise ValueError(f"unknown binarization {mode!r}; choose one of {list(BINARIZE)}")
    if mode == "static":
        g = torch.Generator().manual_seed(seed)
        return torch.bernoulli(x.cpu(), generator=g).to(x.device)
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    return x


_binarize = binarize  # load_dataset's argument shadows the name


# -- file formats -------------------------------------------------------------------------------
def read_idx(path) -> np.ndarray:
    """Parse an idx file (LeCun's MNIST format), gzipped or not."""
    path = Path(path)
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx type code {raw[2]:#x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(dtypes[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: idx file has {len(raw)} bytes, its header implies {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def read_amat(path, width: int = 784) -> np.ndarray:
    """Parse a ``.amat`` file of Larochelle's binarized MNIST: one image per line, ``width``
    space-separated 0/1 values."""
    rows = [line.split() for line in Path(path).read_bytes().splitlines() if line.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if bad:
        raise ValueError(f"{path}: line {bad[0] + 1} has {len(rows[bad[0]])} values, expected {width}")
    arr = np.frombuffer(b"".join(b"".join(r) for r in rows), dtype=np.uint8) - ord("0")
    if arr.size and arr.max() > 1:
        raise ValueError(f"{path}: values other than 0 and 1")
    return arr.reshape(len(rows), width)


# -- finding files --------------------------------------------------------------------------------
def search_dirs(name: str, data_dir=None) -> list[Path]:
    """Folders searched for ``name``'s files, in order: data_dir, $PVAE_DATA, Debian's folder."""
    roots = [Path(d) for d in (data_dir, os.environ.get("PVAE_DATA")) if d]
    dirs = []
    for r in roots:
        dirs += [r, r / name]
        if name in TORCHVISION:
            dirs.append(r / TORCHVISION[name][1] / "raw")
    if name in DEBIAN_DIRS:
        dirs.append(Path(DEBIAN_DIRS[name]))
    return dirs


def _find(dirs, stem):
    for d in dirs:
        for f in (d / stem, d / (stem + ".gz")):
            if f.is_file():
                return f
    return None


def _load_idx_dataset(name, split, data_dir):
    if split not in IDX_FILES:
        raise ValueError(f"{name} has splits 'train' and 'test', not {split!r}")
    img_stem, lbl_stem = IDX_FILES[split]
    dirs = search_dirs(name, data_dir)
    img, lbl = _find(dirs, img_stem), _find(dirs, lbl_stem)
    if img is None or lbl is None:
        root = Path(data_dir or os.environ.get("PVAE_DATA") or Path.home() / ".cache" / "pvae")
        _torchvision_download(name, root)
        dirs = [root / TORCHVISION[name][1] / "raw"]
        img, lbl = _find(dirs, img_stem), _find(dirs, lbl_stem)
    x = torch.from_numpy(read_idx(img).copy()).float().div_(255.0).unsqueeze(1)
    y = torch.from_numpy(read_idx(lbl).astype(np.int64))
    return x, y


def _torchvision_download(name, root):
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name][0])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - report any download failure in one line
        raise FileNotFoundError(
            f"{name}: no idx files in {[str(d) for d in search_dirs(name)] or 'any data folder'} "
            f"and torchvision's download failed ({type(e).__name__}: {' '.join(str(e).split())}); "
            "pass --data-dir or set PVAE_DATA"
        ) from None


def _load_binarized_mnist(split, data_dir):
    if split not in ("train", "valid", "test"):
        raise ValueError(f"binarized-mnist has splits 'train', 'valid' and 'test', not {split!r}")
    stem = f"binarized_mnist_{split}.amat"
    dirs = search_dirs("binarized-mnist", data_dir)
    dirs += [d / "BinarizedMNIST" for d in dirs]
    f = _find(dirs, stem)
    if f is None:
        root = Path(data_dir or os.environ.get("PVAE_DATA") or Path.home() / ".cache" / "pvae") / "binarized-mnist"
        root.mkdir(parents=True, exist_ok=True)
        f = root / stem
        try:
            urllib.request.urlretrieve(AMAT_URL.format(split), f.with_suffix(".part"))
            f.with_suffix(".part").rename(f)
        except Exception as e:  # noqa: BLE001
            raise FileNotFoundError(f"binarized-mnist: {stem} not found in {[str(d) for d in dirs]} and "
                                    f"its download failed ({type(e).__name__}: {e}); pass --data-dir or set PVAE_DATA") from None
    return torch.from_numpy(read_amat(f)).float().reshape(-1, 1, 28, 28), None


def _load_array_file(path, split):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: data files must be .npy or .npz")
    arrays = read_arrays(path)
    xkey = next((k for k in (f"{split}_x", f"x_{split}", "x") if k in arrays), None)
    if xkey is None:
        raise ValueError(f"{path} has arrays {sorted(arrays)}; expected 'x' (and 'y') or '{split}_x'")
    ykey = xkey.replace("x", "y")
    x = arrays[xkey]
    if x.ndim < 2:
        what = "a single number (a 0-d array)" if x.ndim == 0 else f"a 1-D array of {x.shape[0]} values"
        raise ValueError(f"{path}: {xkey} is {what}; data need one row per datapoint, shape (n, ...) (one "
                         "datapoint: add a leading axis, x[None]; n scalars: x[:, None])")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {xkey} holds {x.dtype} values, not numbers")
    return _to_float(x), (labels_from(arrays[ykey], f"{path}: {ykey}") if ykey in arrays else None)


def read_arrays(path) -> dict:
    """The arrays of a ``.npy`` (as ``{"x": a}``) or ``.npz`` file, read without pickle; a file that is
    not one is a one-line ``ValueError``."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return dict(z)
        return {"x": np.load(path, allow_pickle=False)}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        why = ("it holds Python objects, which pvae does not load" if "pickle" in str(e)
               else str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise ValueError(f"cannot read data file {path}: not a NumPy {path.suffix} array file ({why})") from None


def labels_from(y, what: str = "labels") -> torch.Tensor:
    """Class labels as integers: finite, integer-valued numbers, one per datapoint (never truncated)."""
    y = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if y.dim() != 1:
        raise ValueError(f"{what} must be one integer per datapoint (shape (n,)), got shape {tuple(y.shape)}")
    if torch.is_floating_point(y):
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{what} contain NaN or inf: labels must be integers")
        if not bool((y == y.round()).all()):
            bad = y[y != y.round()][0].item()
            raise ValueError(f"{what} must be integers, got {bad:g} (pvae never rounds labels)")
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{what} must be integers, got dtype {y.dtype}")
    return y.long()


def _to_float(a) -> torch.Tensor:
    """Arrays or tensors -> float tensors; uint8 images are divided by 255."""
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def load_dataset(name: str = EMBEDDED, split: str = "train", data_dir=None, binarize: str = "none",
                 n: int | None = None) -> Data:
    """Load a dataset by name (see the module docs) or from a ``.npy``/``.npz`` path.

    ``n`` keeps the first n datapoints.
    """
    if binarize not in BINARIZE:
        raise ValueError(f"unknown binarization {binarize!r}; choose one of {list(BINARIZE)}")
    key = ALIASES.get(name, name)
    factors = names = None
    if key == EMBEDDED:
        if split not in ("train", "test"):
            raise ValueError(f"{EMBEDDED} has splits 'train' and 'test', not {split!r}")
        with resources.files("pvae").joinpath("_embedded/fashion_mnist_sample.npz").open("rb") as f:
            z = np.load(f)
            x, y = _to_float(z[f"{split}_x"]).unsqueeze(1), torch.from_numpy(z[f"{split}_y"].astype(np.int64))
    elif key in ("fashion-mnist", "mnist"):
        x, y = _load_idx_dataset(key, split, data_dir)
    elif key == "binarized-mnist":
        x, y = _load_binarized_mnist(split, data_dir)
    elif key == "shapes":  # procedural, with known factors: labels are the shape
        from pvae.data import shapes

        x, factors = shapes.load(split)
        y, names = factors[:, 0].clone(), shapes.FACTORS
    elif str(name).endswith((".npy", ".npz")):
        x, y = _load_array_file(name, split)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)} or a .npy/.npz path")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (datapoints to keep) must be an integer >= 1, got {n!r}")
        x, y = x[:n], (y[:n] if y is not None else None)
        factors = factors[:n] if factors is not None else None
    if binarize in ("static", "threshold"):
        x = _binarize(x, binarize)
    return Data(x, y, name=key, binarize=binarize, classes=CLASSES.get(key), factors=factors, factor_names=names)


def as_tensors(data, labels=None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Whatever users pass as data -> ``(x, y, binarize mode)``.

    Accepts a `Data`, a tensor or array, an ``(x, y)`` tuple, a dataset name or path,
    or any ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y, ...)``.
    """
    mode = "none"
    if isinstance(data, Data):
        x, y, mode = data.x, data.y, data.binarize
    elif isinstance(data, (str, os.PathLike)):
        d = load_dataset(str(data))
        x, y = d.x, d.y
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        x, y = _to_float(data) if isinstance(data, np.ndarray) else data, None
    elif isinstance(data, (tuple, list)) and len(data) == 1 and not isinstance(data[0], (int, float)):
        return as_tensors(data[0], labels)  # (x,): a TensorDataset-like tuple without labels
    elif isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (int, float)):
        x, y = as_tensors(data[0])[0], torch.as_tensor(data[1])
    elif isinstance(data, torch.utils.data.TensorDataset):
        x = data.tensors[0]
        y = data.tensors[1] if len(data.tensors) > 1 else None
    elif isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise ValueError("the dataset is empty")
        if isinstance(items[0], (tuple, list)):
            x = torch.stack([torch.as_tensor(it[0]) for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
        else:
            x, y = torch.stack([torch.as_tensor(it) for it in items]), None
    else:
        raise TypeError(f"data must be a tensor, array, (x, y) tuple, Dataset, dataset name or path; "
                        f"got {type(data).__name__}")
    if labels is not None:
        y = torch.as_tensor(labels)
    if x.is_complex():
        raise TypeError(f"data must be real numbers, got dtype {x.dtype}")
    if not torch.is_floating_point(x):
        x = _to_float(x)
    if x.shape[0] == 0:
        raise ValueError("the dataset is empty")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} datapoints")
    return x, y, mode


def semi_supervised(data, n_labelled: int, *, labelled_share: float | None = 0.1, seed: int = 0) -> Data:
    """Training data for a semi-supervised pair: every label hidden (``-1``) but ``n_labelled``,
    drawn class-balanced (``n_labelled / C`` per class) with a seeded generator.

    Few labels would otherwise be seen once an epoch among tens of thousands of datapoints, so
    the labelled datapoints are repeated until they make up ``labelled_share`` of the result
    (None: no repetition), as Kingma et al. (2014) and Pyro's SS-VAE mix labelled datapoints into
    every batch. The result keeps the input's binarization mode.
    """
    x, y, mode = as_tensors(data)
    if y is None:
        raise ValueError("semi_supervised needs labelled data: pass (x, y) or a dataset with labels")
    y = y.long()
    classes = int(y.max()) + 1
    if int(n_labelled) != n_labelled or n_labelled < classes or n_labelled % classes:
        raise ValueError(f"n_labelled must be a positive multiple of the {classes} classes, got {n_labelled}")
    if labelled_share is not None and not 0 < labelled_share < 1:
        raise ValueError(f"labelled_share must lie in (0, 1) or be None, got {labelled_share}")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(classes):
        members = (y == c).nonzero()[:, 0]
        if members.numel() < n_labelled // classes:
            raise ValueError(f"class {c} has {members.numel()} datapoints, fewer than {n_labelled // classes}")
        chosen.append(members[torch.randperm(members.numel(), generator=g)[: n_labelled // classes]])
    chosen = torch.cat(chosen)
    unlabelled = torch.ones(x.shape[0], dtype=torch.bool)
    unlabelled[chosen] = False
    repeat = 1
    if labelled_share is not None:
        repeat = max(1, round(labelled_share * int(unlabelled.sum()) / ((1 - labelled_share) * chosen.numel())))
    idx = torch.cat([unlabelled.nonzero()[:, 0], chosen.repeat(repeat)])
    labels = torch.cat([torch.full((int(unlabelled.sum()),), -1, dtype=torch.long), y[chosen].repeat(repeat)])
    return Data(x[idx], labels, name=f"semi-supervised ({n_labelled} labels)", binarize=mode)
