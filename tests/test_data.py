"""The data layer: each format parsed from small synthetic files, the search order, the
embedded sample, binarization, and what fit accepts as data."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import pvae
from pvae.data import datasets as D


def write_idx(path, array, gz=True):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob = header + array.tobytes()
    (gzip.open if gz else open)(path, "wb").write(blob)


def make_idx_set(folder, n_train=6, n_test=4, value=7, gz=True):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", np.full((n_train, 28, 28), value), gz)
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", np.arange(n_train) % 10, gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", np.full((n_test, 28, 28), value), gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", np.arange(n_test) % 10, gz)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_parser(tmp_path, gz):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    f = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(f, a, gz)
    np.testing.assert_array_equal(D.read_idx(f), a)


def test_idx_parser_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an idx file"):
        D.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 2)), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match="header implies"):
        D.read_idx(tmp_path / "short")


def test_fashion_mnist_from_data_dir_then_env(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "given", n_train=6, value=255)
    make_idx_set(tmp_path / "env" / "fashion-mnist", n_train=9, value=0, gz=False)
    monkeypatch.setenv("PVAE_DATA", str(tmp_path / "env"))
    d = pvae.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "given")
    assert d.x.shape == (6, 1, 28, 28) and float(d.x.max()) == 1.0  # data_dir wins
    assert d.y.tolist() == [0, 1, 2, 3, 4, 5]
    d = pvae.load_dataset("fashion-mnist", "test")
    assert d.x.shape == (4, 1, 28, 28)
    d = pvae.load_dataset("fashion-mnist", "train")
    assert d.x.shape == (9, 1, 28, 28)  # then $PVAE_DATA/<name>


def test_torchvision_layout_is_found(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", n_train=5)
    assert pvae.load_dataset("mnist", "train", data_dir=tmp_path).x.shape == (5, 1, 28, 28)


def test_search_order_lists_debian_last(tmp_path, monkeypatch):
    monkeypatch.setenv("PVAE_DATA", "/env")
    dirs = [str(d) for d in D.search_dirs("fashion-mnist", tmp_path)]
    assert dirs.index(str(tmp_path)) < dirs.index("/env") < dirs.index("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not Path(D.DEBIAN_DIRS["fashion-mnist"]).is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("PVAE_DATA", raising=False)
    d = pvae.load_dataset("fashion-mnist", "test")
    assert d.x.shape == (10000, 1, 28, 28) and d.y.bincount().tolist() == [1000] * 10
    assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0


def write_amat(path, rows):
    path.write_text("\n".join(" ".join(str(int(v)) for v in r) for r in rows) + "\n")


def test_amat_parser_and_binarized_mnist_splits(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("valid", 3), ("test", 2)):
        write_amat(tmp_path / f"binarized_mnist_{split}.amat", rng.integers(0, 2, size=(n, 784)))
    a = D.read_amat(tmp_path / "binarized_mnist_train.amat")
    assert a.shape == (5, 784) and set(np.unique(a)) <= {0, 1}
    expected = np.loadtxt(tmp_path / "binarized_mnist_train.amat")
    np.testing.assert_array_equal(a, expected)
    for split, n in (("train", 5), ("valid", 3), ("test", 2)):
        d = pvae.load_dataset("binarized-mnist", split, data_dir=tmp_path)
        assert d.x.shape == (n, 1, 28, 28) and d.y is None


def test_amat_parser_rejects_short_lines(tmp_path):
    (tmp_path / "bad.amat").write_text("0 1 0\n1 1\n")
    with pytest.raises(ValueError, match="line 2 has 2 values, expected 3"):
        D.read_amat(tmp_path / "bad.amat", width=3)


def test_embedded_sample():
    tr, te = pvae.load_dataset("fashion-mnist-sample", "train"), pvae.load_dataset("sample", "test")
    assert tr.x.shape == (5000, 1, 28, 28) and te.x.shape == (1000, 1, 28, 28)
    assert tr.y.min() == 0 and tr.y.max() == 9 and tr.y.bincount().min() > 400
    assert 0.0 <= float(tr.x.min()) and float(tr.x.max()) == 1.0


def test_binarization_modes():
    x = pvae.load_dataset("sample", "test", n=50).x
    st = D.binarize(x, "static")
    assert set(st.unique().tolist()) == {0.0, 1.0} and torch.equal(st, D.binarize(x, "static"))
    assert torch.equal(D.binarize(x, "threshold"), (x > 0.5).float())
    assert torch.equal(D.binarize(x, "none"), x)
    # the static draw follows the grey values: mean pixel intensity is preserved
    assert abs(float(st.mean() - x.mean())) < 0.01
    with pytest.raises(ValueError, match="unknown binarization 'half'"):
        pvae.load_dataset("sample", binarize="half")


def test_npy_npz_files_and_tensors(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "d.npz", train_x=x[:8], train_y=np.arange(8), test_x=x[8:], test_y=np.arange(4))
    d = pvae.load_dataset(str(tmp_path / "x.npy"))
    assert d.x.shape == (12, 28, 28) and float(d.x.max()) <= 1.0
    d = pvae.load_dataset(str(tmp_path / "d.npz"), "test")
    assert d.x.shape == (4, 28, 28) and d.y.tolist() == [0, 1, 2, 3]
    xs, ys, _ = D.as_tensors((torch.from_numpy(x), torch.arange(12)))
    assert xs.dtype == torch.float32 and float(xs.max()) <= 1.0 and ys.shape == (12,)
    xs, ys, _ = D.as_tensors(torch.utils.data.TensorDataset(torch.rand(5, 3), torch.arange(5)))
    assert xs.shape == (5, 3) and ys.tolist() == [0, 1, 2, 3, 4]
    xs, ys, _ = D.as_tensors((torch.rand(4, 3),))  # a 1-tuple: data without labels
    assert xs.shape == (4, 3) and ys is None


@pytest.mark.parametrize("bad, error, message", [
    ("imagenet", ValueError, "unknown dataset 'imagenet'; choose one of"),
    ("/no/such/file.npz", FileNotFoundError, "no such data file"),
    (torch.zeros(0, 3), ValueError, "the dataset is empty"),
    (3.0, TypeError, "data must be a tensor"),
])
def test_bad_data(bad, error, message):
    with pytest.raises(error, match=message):
        if isinstance(bad, str):
            pvae.load_dataset(bad)
        else:
            D.as_tensors(bad)


def test_missing_files_without_network_name_the_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_DIRS", {})
    monkeypatch.setenv("PVAE_DATA", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(D.urllib.request, "urlretrieve", offline)
    with pytest.raises(FileNotFoundError, match="binarized_mnist_test.amat not found.*download failed"):
        pvae.load_dataset("binarized-mnist", "test")


def test_a_failed_download_is_one_whole_line_with_its_fix(tmp_path, monkeypatch, capsys):
    """torchvision's errors span several lines ("Error downloading ...", "Tried ..."): the message
    keeps all of it on one line and still ends with the fix."""
    import torchvision

    monkeypatch.setattr(D, "DEBIAN_DIRS", {})
    monkeypatch.setenv("PVAE_DATA", str(tmp_path))

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example.org/a, got:\n"
                               "<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    from pvae.cli import main

    assert main(["train", "--dataset", "fashion-mnist", "--epochs", "1", "--quiet",
                 "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "name resolution" in err and err.endswith("pass --data-dir or set PVAE_DATA")
