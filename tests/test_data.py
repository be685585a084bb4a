"""archselect.data: file formats, downloads, the search split, augmentation and the resumable Loader."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from archselect.data import (DATASETS, Checksum, ImageSet, Loader, cutout, download_file, load_dataset,
                             normalize, random_crop_flip, read_idx, resize, search_split, write_idx)
from archselect.data.cifar import CIFAR10, CIFAR100, load_cifar
from archselect.data.idx import encode_idx, parse_idx
from archselect.data.mnist import MNIST, load_idx_dataset
from archselect.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's real cache from tests."""
    monkeypatch.setenv("ARCHSELECT_DATA", str(tmp_path_factory.mktemp("cache")))


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------- IDX

@settings(max_examples=40, deadline=None)
@given(arr=hnp.arrays(dtype=st.sampled_from(["u1", "i1", ">i2", "<i4", "f4", "f8"]),
                      shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
       gz=st.booleans())
def test_idx_round_trip(tmp_path_factory, arr, gz):
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, arr)
    back = read_idx(path)
    assert back.shape == arr.shape and back.dtype == arr.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, arr)


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=0, max_value=4 + 12 + 2 * 3 * 4 - 1))
def test_idx_any_truncation_is_a_user_error(cut):
    data = encode_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with pytest.raises(UserError, match="myfile"):
        parse_idx(data[:cut], what="myfile")


@pytest.mark.parametrize("data, reason", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "dtype code"),
    (b"\x00\x00\x08\x00", "0 dims"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "bytes"),  # trailing garbage
])
def test_idx_corrupt_headers(tmp_path, data, reason):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(UserError, match=reason) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_damaged_gzip_names_the_file(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros(100, np.uint8)))[:-10])
    with pytest.raises(UserError, match=str(path)):
        read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="gzip"):
        read_idx(path)


def _write_mnist_like(folder: Path, n_train=6, n_test=4, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = _rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for stem, arr in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("subfolder", [False, True])
def test_load_idx_datasets(tmp_path, name, gz, subfolder):
    arrays = _write_mnist_like(tmp_path / name if subfolder else tmp_path, gz=gz)
    train = load_dataset(name, "train", tmp_path)
    test = load_dataset(name, "test", tmp_path)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert train.num_classes == 10 and train.name == name
    assert train.flip == (name == "fashion-mnist")
    assert train.mean == ((0.2860,) if name == "fashion-mnist" else (0.1307,))


def test_idx_dataset_inconsistent_files(tmp_path):
    _write_mnist_like(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(UserError, match="5 labels for 6 images"):
        load_dataset("mnist", "train", tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(6, 10, np.uint8))
    with pytest.raises(UserError, match="out of range"):
        load_dataset("mnist", "train", tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((6, 28 * 28), np.uint8))
    with pytest.raises(UserError, match="3-d uint8"):
        load_dataset("mnist", "train", tmp_path)


def test_idx_dataset_truncated_file(tmp_path):
    _write_mnist_like(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", "train", tmp_path)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*not found"):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(UserError, match="data_batch_1.*not found"):
        load_dataset("cifar10", "train", tmp_path)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    train = load_dataset("fashion-mnist", "train", tmp_path)  # empty data_dir: falls back to the Debian files
    test = load_dataset("fashion-mnist", "test", tmp_path)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.num_classes == 10 and sorted(train.labels.unique().tolist()) == list(range(10))
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-3)


# ---------------------------------------------------------------------------------------------- downloads

def _url(path: Path) -> str:
    return path.resolve().as_uri()


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(UserError, match="checksum mismatch") as e:
        download_file([_url(src)], dest, Checksum("sha256", "0" * 64))
    assert str(dest) in str(e.value)
    assert not dest.exists() and os.listdir(dest.parent) == []


def test_download_verified_file_lands_in_place(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    good = Checksum("md5", hashlib.md5(b"payload").hexdigest())
    # the first mirror is unreachable: the second one is used
    assert download_file([_url(tmp_path / "missing.bin"), _url(src)], dest, good) == dest
    assert dest.read_bytes() == b"payload" and os.listdir(dest.parent) == ["file.bin"]


def test_download_unreachable_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(UserError, match=f"by hand.*{dest}"):
        download_file([_url(tmp_path / "nope.bin")], dest, Checksum("md5", "0" * 32))


def test_download_skipped_when_a_verified_file_is_already_there(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"placed by hand")
    check = Checksum("sha256", hashlib.sha256(b"placed by hand").hexdigest())
    assert download_file([_url(tmp_path / "unreachable")], dest, check) == dest


def test_download_decompressed_checksum_survives_regzipping(tmp_path):
    raw = encode_idx(np.arange(1000, dtype=np.uint8))
    src = tmp_path / "a.gz"
    src.write_bytes(gzip.compress(raw, compresslevel=1, mtime=123))
    check = Checksum("sha256", hashlib.sha256(raw).hexdigest(), decompressed=True)
    assert hashlib.md5(src.read_bytes()).hexdigest() != hashlib.md5(gzip.compress(raw, mtime=0)).hexdigest()
    download_file([_url(src)], tmp_path / "out" / "a.gz", check)
    assert gzip.decompress((tmp_path / "out" / "a.gz").read_bytes()) == raw


def test_mnist_download_from_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    arrays = _write_mnist_like(mirror)
    sums = {stem: Checksum("md5", hashlib.md5((mirror / (stem + ".gz")).read_bytes()).hexdigest())
            for stem in arrays}
    spec = replace(MNIST, mirrors=(_url(mirror) + "/",), checksums=sums)
    data = tmp_path / "data"
    with pytest.raises(UserError, match="not found"):
        load_idx_dataset(spec, "train", data)
    ds = load_idx_dataset(spec, "train", data, download=True)
    assert len(ds) == 6 and (data / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    bad = replace(spec, checksums={k: Checksum("md5", "0" * 32) for k in sums})
    with pytest.raises(UserError, match="checksum mismatch"):
        load_idx_dataset(bad, "test", data, download=True)


# ---------------------------------------------------------------------------------------------- CIFAR

def _cifar_batch(n: int, label_key: str, num_classes: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = _rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    # the official files are Python 2 pickles: bytes keys, labels a list of ints, data (N, 3072) in CHW order
    batch = {b"batch_label": b"batch", b"data": images.reshape(n, -1), label_key.encode(): labels,
             b"filenames": [b"x.png"] * n}
    return batch, images, np.array(labels)


def _py2_dumps(obj) -> bytes:
    """Pickle ``obj`` the way Python 2 did when the official CIFAR files were made: keys and array bytes are
    Python 2 ``str`` (opcodes U/T), arrays are rebuilt through numpy.core.multiarray._reconstruct."""
    def text(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def enc(o) -> bytes:
        if isinstance(o, bytes):
            return text(o)
        if isinstance(o, bool) or o is None:
            return {True: b"\x88", False: b"\x89", None: b"N"}[o]
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, tuple):
            return b"(" + b"".join(map(enc, o)) + b"t"
        if isinstance(o, list):
            return b"](" + b"".join(map(enc, o)) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        assert isinstance(o, np.ndarray) and o.dtype == np.uint8
        dtype = b"cnumpy\ndtype\n" + enc((b"u1", 0, 1)) + b"R" + enc((3, b"|", None, None, None, -1, -1, 0)) + b"b"
        array = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + enc((0,)) + enc(b"b") + b"tR"
        state = b"(" + enc(1) + enc(o.shape) + dtype + enc(False) + text(o.tobytes()) + b"t"
        return array + state + b"b"

    return b"\x80\x02" + enc(obj) + b"."


def _write_cifar(folder: Path, spec, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train = []
    for i, name in enumerate(spec.train_files + spec.test_files):
        batch, images, labels = _cifar_batch(n, spec.label_key, spec.num_classes, seed=i)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        if name in spec.train_files:
            train.append((images, labels))
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])


@pytest.mark.parametrize("spec, in_subfolder", [(CIFAR10, True), (CIFAR10, False), (CIFAR100, True)])
def test_load_cifar(tmp_path, spec, in_subfolder):
    images, labels = _write_cifar(tmp_path / spec.folder if in_subfolder else tmp_path, spec)
    train = load_dataset(spec.name, "train", tmp_path)
    np.testing.assert_array_equal(train.images.numpy(), images)
    np.testing.assert_array_equal(train.labels.numpy(), labels)
    assert train.num_classes == spec.num_classes and train.flip and len(train.mean) == 3
    assert len(load_dataset(spec.name, "test", tmp_path)) == 3


@pytest.mark.parametrize("spec", [CIFAR10, CIFAR100])
def test_cifar_python2_pickles(tmp_path, spec):
    _write_cifar(tmp_path, spec)
    batch, images, labels = _cifar_batch(4, spec.label_key, spec.num_classes, seed=5)
    (tmp_path / spec.test_files[0]).write_bytes(_py2_dumps(batch))
    test = load_dataset(spec.name, "test", tmp_path)
    np.testing.assert_array_equal(test.images.numpy(), images)
    np.testing.assert_array_equal(test.labels.numpy(), labels)


def test_cifar_python3_pickle_with_str_keys(tmp_path):
    _write_cifar(tmp_path, CIFAR100)
    batch, images, _ = _cifar_batch(2, "fine_labels", 100, seed=9)
    (tmp_path / "test").write_bytes(pickle.dumps({k.decode(): v for k, v in batch.items()}))
    np.testing.assert_array_equal(load_dataset("cifar100", "test", tmp_path).images.numpy(), images)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.pop(b"data"), "missing field 'data'"),
    (lambda b: b.__setitem__(b"data", np.zeros((3, 100), np.uint8)), r"\(N, 3072\)"),
    (lambda b: b.__setitem__(b"labels", [0, 1]), "to match 'data'"),
    (lambda b: b.__setitem__(b"labels", [0, 1, 10]), "0..9"),
])
def test_cifar_bad_batches(tmp_path, mutate, message):
    _write_cifar(tmp_path, CIFAR10)
    batch, _, _ = _cifar_batch(3, "labels", 10, seed=0)
    mutate(batch)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError, match=message):
        load_dataset("cifar10", "test", tmp_path)


@settings(max_examples=30, deadline=None)
@given(cut=st.floats(min_value=0.0, max_value=0.999))
def test_cifar_truncated_batch_is_a_user_error(tmp_path_factory, cut):
    folder = tmp_path_factory.mktemp("cifar")
    _write_cifar(folder, CIFAR10)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", "test", folder)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_is_refused(tmp_path):
    _write_cifar(tmp_path, CIFAR10)
    marker = tmp_path / "pwned"
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _md5_of(path: Path) -> Checksum:
    return Checksum("md5", hashlib.md5(path.read_bytes()).hexdigest())


def test_cifar_download_and_extract(tmp_path):
    staged = tmp_path / "staged"
    images, _ = _write_cifar(staged / CIFAR10.folder, CIFAR10)
    archive = _tarball(tmp_path / "cifar-10-python.tar.gz",
                       {f"{CIFAR10.folder}/{f.name}": f.read_bytes() for f in (staged / CIFAR10.folder).iterdir()})
    spec = replace(CIFAR10, url=_url(archive), checksum=_md5_of(archive))
    data = tmp_path / "data"
    ds = load_cifar(spec, "train", data, download=True)
    np.testing.assert_array_equal(ds.images.numpy(), images)
    assert sorted(p.name for p in data.iterdir()) == [CIFAR10.folder]  # archive and temp folder removed
    with pytest.raises(UserError, match="checksum mismatch"):
        load_cifar(replace(spec, checksum=Checksum("md5", "0" * 32)), "train", tmp_path / "other", download=True)


def test_cifar_archive_with_path_traversal_is_refused(tmp_path):
    archive = _tarball(tmp_path / "evil.tar.gz", {"../escaped": b"x", f"{CIFAR10.folder}/test_batch": b"y"})
    spec = replace(CIFAR10, url=_url(archive), checksum=_md5_of(archive))
    data = tmp_path / "data"
    with pytest.raises(UserError, match="cannot extract"):
        load_cifar(spec, "test", data, download=True)
    assert not (tmp_path / "escaped").exists() and not (data / CIFAR10.folder).exists()


# ---------------------------------------------------------------------------------------------- ImageNet16

def _write_imagenet16(root: Path, n: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    written = {}
    for i, rel in enumerate([f"Imagenet16_train/train_data_batch_{j}" for j in range(1, 11)]
                            + ["Imagenet16_val/val_data"]):
        rng = _rng(100 + i)
        data = rng.integers(0, 256, (n, 768), dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        labels[:3] = [1, 120, 121]  # both ends of the kept range, and the first dropped class
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        batch = {"data": data, "labels": labels.tolist(), "mean": np.zeros(768)}
        if rel.endswith("_1"):  # one batch as Python 2 wrote it, the rest as Python 3
            batch = {k.encode(): v for k, v in batch.items() if k != "mean"}
        (root / rel).write_bytes(_py2_dumps(batch) if rel.endswith("_1") else pickle.dumps(batch))
        written[rel] = (data, labels)
    return written


def test_load_imagenet16_120(tmp_path):
    written = _write_imagenet16(tmp_path)
    test = load_dataset("imagenet16-120", "test", tmp_path)
    data, labels = written["Imagenet16_val/val_data"]
    keep = labels <= 120
    np.testing.assert_array_equal(test.images.numpy(), data[keep].reshape(-1, 3, 16, 16))
    np.testing.assert_array_equal(test.labels.numpy(), labels[keep] - 1)
    assert test.labels[:2].tolist() == [0, 119] and test.num_classes == 120 and test.flip
    assert test.mean[0] == pytest.approx(122.68 / 255) and test.std[2] == pytest.approx(65.09 / 255)
    train = load_dataset("imagenet16-120", "train", tmp_path)
    assert len(train) == sum(int((lab <= 120).sum()) for k, (_, lab) in written.items() if "train" in k)


def test_imagenet16_missing_explains_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match="Imagenet16_train/train_data_batch_1..10"):
        load_dataset("imagenet16-120", "train", tmp_path, download=True)


def test_imagenet16_bad_labels(tmp_path):
    _write_imagenet16(tmp_path)
    path = tmp_path / "Imagenet16_val" / "val_data"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 768), np.uint8), "labels": [0, 5]}))
    with pytest.raises(UserError, match="1..1000"):
        load_dataset("imagenet16-120", "test", tmp_path)


# ---------------------------------------------------------------------------------------------- registry

def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="cifar10.*imagenet16-120"):
        load_dataset("cifar11", "train")
    with pytest.raises(UserError, match="train, test"):
        load_dataset("digits", "valid")
    assert set(DATASETS) == {"fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet16-120", "digits", "svhn",
                             "imagenet"}


def test_digits():
    pytest.importorskip("sklearn")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360 and train.images.shape[1:] == (1, 8, 8)
    assert train.images.max() == 255 and not train.flip and train.num_classes == 10
    assert train.mean == test.mean and 0 < train.mean[0] < 1
    again = load_dataset("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


# ---------------------------------------------------------------------------------------------- search split

def _indexed_set(n: int, size: int = 8, channels: int = 3, flip: bool = True) -> ImageSet:
    """Image i is filled with the value i % 256 and has label i: batches can be traced back to their source."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, channels, size, size).clone()
    return ImageSet(images, torch.arange(n), n, (0.5,) * channels, (0.25,) * channels, "toy", flip)


def test_search_split_halves_deterministically():
    ds = _indexed_set(101)
    a_train, a_valid = search_split(ds, seed=3)
    b_train, b_valid = search_split(ds, seed=3)
    assert torch.equal(a_train.labels, b_train.labels) and torch.equal(a_valid.labels, b_valid.labels)
    assert len(a_train) + len(a_valid) == 101 and abs(len(a_train) - len(a_valid)) <= 1
    assert not set(a_train.labels.tolist()) & set(a_valid.labels.tolist())
    assert not torch.equal(search_split(ds, seed=4)[0].labels, a_train.labels)
    assert a_train.name == "toy" and a_train.num_classes == ds.num_classes


def test_search_split_subset_and_portion():
    ds = _indexed_set(100)
    train, valid = search_split(ds, seed=0, subset=40)
    assert len(train) == len(valid) == 20
    train, valid = search_split(ds, seed=0, subset=40, portion=0.75)
    assert (len(train), len(valid)) == (30, 10)
    with pytest.raises(UserError, match="500.*100"):
        search_split(ds, seed=0, subset=500)
    with pytest.raises(UserError, match="at least one"):
        search_split(ds, seed=0, subset=1)
    with pytest.raises(UserError, match="portion"):
        search_split(ds, seed=0, portion=1.0)


# ---------------------------------------------------------------------------------------------- augmentation

def test_crop_flip_outputs_are_windows_of_the_padded_image():
    x = torch.randint(0, 256, (16, 2, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 1, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    seen_flip = seen_plain = False
    for i in range(16):
        windows = [padded[i, :, oy:oy + 8, ox:ox + 8] for oy in range(3) for ox in range(3)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        seen_plain, seen_flip = seen_plain or plain, seen_flip or mirrored
    assert seen_flip and seen_plain
    assert torch.equal(random_crop_flip(x, 0, False, torch.Generator()), x)


def test_cutout_and_normalize():
    x = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    y = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.allclose(y[:, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]).expand(4, 3))
    holes = (cutout(torch.ones(64, 1, 8, 8), 4, torch.Generator().manual_seed(1)) == 0).sum(dim=(1, 2, 3))
    assert holes.max() == 16 and holes.min() >= 4  # a full square, or one clipped at a corner


def test_resize_whole_set():
    x = torch.full((3, 1, 8, 8), 77, dtype=torch.uint8)
    y = resize(x, 16)
    assert y.shape == (3, 1, 16, 16) and y.dtype == torch.uint8 and bool((y == 77).all())


# ---------------------------------------------------------------------------------------------- Loader

def test_loader_batches_are_a_pure_function_of_seed_epoch_and_index():
    ds = _indexed_set(50)
    make = lambda: Loader(ds, 8, seed=7, augment=True, cutout=3)  # noqa: E731
    a, b = make(), make()
    assert len(a) == 6
    for e, k in [(0, 0), (0, 5), (3, 2), (0, 0)]:
        xa, ya = a.batch(e, k)
        xb, yb = b.batch(e, k)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    full = list(a.epoch(2))
    tail = list(b.epoch(2, start=4))
    assert len(full) == 6 and len(tail) == 2
    for (x1, y1), (x2, y2) in zip(full[4:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(a.batch(0, 0)[1], a.batch(1, 0)[1])  # a new order each epoch


def test_loader_labels_follow_images_and_normalisation():
    ds = _indexed_set(30)
    loader = Loader(ds, 8, seed=0, augment=False, drop_last=False)
    assert len(loader) == 4
    seen = []
    for x, y in loader.epoch(0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        pixel = x[:, :, 0, 0] * 0.25 + 0.5  # undo normalisation
        torch.testing.assert_close(pixel, (y % 256).float()[:, None].expand_as(pixel) / 255)
        seen += y.tolist()
    assert sorted(seen) == list(range(30))


def test_loader_shapes_sizes_and_memory_format():
    ds = _indexed_set(10, size=16, channels=3)
    loader = Loader(ds, 4, seed=0, augment=True, image_size=32, channels_last=True, shuffle=False)
    x, y = loader.batch(0, 0)
    assert x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert loader.images.dtype == torch.uint8 and len(loader) == 2
    small = Loader(ds, 64, seed=0, augment=False)
    assert len(small) == 1 and small.batch(0, 0)[0].shape[0] == 10  # one smaller batch, not zero
    with pytest.raises(IndexError):
        small.batch(0, 1)
    with pytest.raises(UserError):
        Loader(ds, 0, seed=0, augment=False)


def test_loader_no_flip_for_digit_like_sets():
    ds = _indexed_set(8, size=8, channels=1, flip=False)
    asym = torch.zeros(8, 8, dtype=torch.uint8)
    asym[:, :2] = 200  # left stripe: a flip would move it to the right
    ds = replace(ds, images=asym.expand(8, 1, 8, 8).clone())
    for k in range(20):
        x, _ = Loader(ds, 8, seed=k, augment=True).batch(0, 0)
        assert (x[:, 0, :, 7] < 0).all()  # the right border never gets the stripe


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 16), seed=st.integers(-2**40, 2**62), epoch=st.integers(0, 99),
       drop_last=st.booleans())
def test_loader_epoch_visits_each_image_at_most_once(n, batch_size, seed, epoch, drop_last):
    loader = Loader(_indexed_set(n, size=4), batch_size, seed=seed, augment=True, drop_last=drop_last)
    seen = [i for _, y in loader.epoch(epoch) for i in y.tolist()]
    assert len(seen) == len(set(seen))
    expected = n if not drop_last or n < batch_size else n - n % batch_size
    assert len(seen) == expected and len(loader) == -(-expected // batch_size)
