"""SVHN from its official MAT-files, written here in the real format (MATLAB 5: X 32x32x3xN uint8, y Nx1 with 10 for
the digit 0): shapes, the label 10 -> 0, a checksummed download, one-line errors."""
import hashlib

import numpy as np
import pytest
import torch

scipy_io = pytest.importorskip("scipy.io")

from archselect.data import load_dataset  # noqa: E402
from archselect.data import svhn  # noqa: E402
from archselect.errors import UserError  # noqa: E402


def write_svhn(path, n=6, seed=0):
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, as the official files
    scipy_io.savemat(path, {"X": x, "y": y})
    return x, y


def test_reads_the_official_layout(tmp_path):
    x, y = write_svhn(tmp_path / "train_32x32.mat", n=12)
    ds = load_dataset("svhn", "train", data_dir=tmp_path)
    assert ds.images.shape == (12, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [int(v) % 10 for v in y.reshape(-1)]  # label 10 is the digit 0
    assert torch.equal(ds.images[5, 2], torch.from_numpy(x[:, :, 2, 5]))  # image 5, blue channel
    assert ds.num_classes == 10 and ds.flip


def test_download_is_checksummed(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    source.mkdir()
    write_svhn(source / "test_32x32.mat")
    digest = hashlib.md5((source / "test_32x32.mat").read_bytes()).hexdigest()
    monkeypatch.setattr(svhn, "URL", source.as_uri() + "/")
    monkeypatch.setitem(svhn.FILES, "test", ("test_32x32.mat", svhn.Checksum("md5", digest)))
    ds = load_dataset("svhn", "test", data_dir=tmp_path / "data", download=True)
    assert len(ds) == 6 and (tmp_path / "data" / "svhn" / "test_32x32.mat").is_file()
    monkeypatch.setitem(svhn.FILES, "test", ("test_32x32.mat", svhn.Checksum("md5", "0" * 32)))
    with pytest.raises(UserError):
        load_dataset("svhn", "test", data_dir=tmp_path / "other", download=True)
    assert not (tmp_path / "other" / "svhn" / "test_32x32.mat").exists()


def test_bad_files_are_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="train_32x32.mat not found"):
        load_dataset("svhn", "train", data_dir=tmp_path / "d")
    (tmp_path / "d" / "train_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="not an SVHN MAT-file"):
        load_dataset("svhn", "train", data_dir=tmp_path / "d")
    scipy_io.savemat(tmp_path / "d" / "train_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(UserError, match="32 x 32 x 3 x N"):
        load_dataset("svhn", "train", data_dir=tmp_path / "d")
    scipy_io.savemat(tmp_path / "d" / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                                          "y": np.array([[0], [11]])})
    with pytest.raises(UserError, match="labels must be 1..10"):
        load_dataset("svhn", "train", data_dir=tmp_path / "d")


def test_rdarts_s1_svhn_config_runs_search_select_and_train(tmp_path):
    """configs/rdarts-s1-svhn.yaml end to end at a tiny size: the darts-s1 space on SVHN files in the real format,
    DARTS-PT's selection, retraining the selected cell."""
    from archselect.cli import main

    (tmp_path / "data").mkdir()
    write_svhn(tmp_path / "data" / "train_32x32.mat", n=48)
    write_svhn(tmp_path / "data" / "test_32x32.mat", n=8, seed=1)
    tiny = [f"data.data_dir={tmp_path / 'data'}", "data.download=false", "data.batch_size=12", "data.image_size=16",
            "space.C=4", "space.N=3", "search.epochs=1", "threads=1", "seed=0",
            "select.options.perturbation.tune_epochs=0", "select.options.perturbation.valid_batches=1"]
    config = str(svhn_config())
    assert main(["search", "--config", config, "--out", str(tmp_path / "run"), *tiny]) == 0
    assert main(["train", str(tmp_path / "run" / "selections" / "perturbation.json"), "--config", config,
                 "--out", str(tmp_path / "train"), *tiny, "train.C=4", "train.N=3", "train.epochs=1",
                 "train.batch_size=8", "train.auxiliary_weight=0"]) == 0
    assert (tmp_path / "train" / "result.json").is_file()


def svhn_config():
    from pathlib import Path
    return Path(__file__).resolve().parents[1] / "configs" / "rdarts-s1-svhn.yaml"
