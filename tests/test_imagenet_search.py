"""ImageNet in the search and selection stages: the search split of an ImageFolder (a file list, nothing decoded,
ProxylessNAS' class-balanced hold-out), FolderLoader's random access (`batch`, `rebatch`) as a pure function of
(seed, epoch, k) in this process or a worker pool, and `archselect search` / `select` with the MobileNet paper config
on a tiny folder of generated JPEGs, resumed after an interruption."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from archselect.cli import main
from archselect.data import FolderLoader, ImageFolder, load_dataset, search_split
from archselect.errors import UserError
from archselect.files import load_latest_checkpoint
from archselect.optimizers.proxylessnas import ProxylessNAS

from test_imagenet import write_jpegs

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mobilenet-proxylessnas-imagenet.yaml"


@pytest.fixture
def folder(tmp_path):
    return write_jpegs(tmp_path / "imagenet")


def listed(n_per_class=(5, 3, 4)) -> ImageFolder:
    """A file list whose files do not exist: splitting it must not open any."""
    labels = [c for c, n in enumerate(n_per_class) for _ in range(n)]
    files = np.array([f"c{c}/{i}.JPEG" for i, c in enumerate(labels)], dtype=np.bytes_)
    return ImageFolder(Path("/nonexistent"), files, torch.tensor(labels), ("c0", "c1", "c2"))


def names(ds: ImageFolder) -> set[bytes]:
    return set(ds.files.tolist())


# -- the search split --------------------------------------------------------------------------------------------------

def test_a_folder_splits_by_file_list_with_a_fixed_balanced_hold_out():
    ds = listed()
    train, valid = search_split(ds, seed=7, valid_size=5, balanced=True)
    assert isinstance(valid, ImageFolder) and len(valid) == 5 and len(train) == 7
    assert torch.bincount(valid.labels, minlength=3).tolist() == [2, 2, 1]  # 5 // 3 each, the first 5 % 3 one more
    assert names(train) | names(valid) == names(ds) and not names(train) & names(valid)
    assert all(ds.labels[ds.files.tolist().index(f)] == y for f, y in zip(valid.files.tolist(), valid.labels.tolist()))
    again = search_split(ds, seed=7, valid_size=5, balanced=True)[1]
    assert np.array_equal(again.files, valid.files)
    draws = {tuple(search_split(ds, seed=s, valid_size=5, balanced=True)[1].files.tolist()) for s in range(6)}
    assert len(draws) > 1  # the seed decides which images, the quota how many per class
    uniform_train, uniform = search_split(ds, seed=7, valid_size=4)
    assert (len(uniform_train), len(uniform)) == (8, 4)
    half_train, half = search_split(ds, seed=7)  # portion: as for in-memory sets
    assert (len(half_train), len(half)) == (6, 6)
    with pytest.raises(UserError, match="holds out 2 images of class 1, but the images drawn hold only 1"):
        search_split(listed((3, 1, 3)), seed=0, valid_size=6, balanced=True)
    with pytest.raises(UserError, match="valid_size=12"):
        search_split(ds, seed=0, valid_size=12)


# -- FolderLoader: random access --------------------------------------------------------------------------------------

def test_batch_k_of_epoch_e_is_the_same_however_it_is_fetched(folder):
    ds = load_dataset("imagenet", "train", folder)
    inline = FolderLoader(ds, 5, seed=3, augment=True, image_size=16)
    streamed = list(inline.epoch(1))
    assert len(streamed) == len(inline) == 2
    for k in (1, 0):
        assert all(torch.equal(a, b) for a, b in zip(inline.batch(1, k), streamed[k]))
    pooled = FolderLoader(ds, 5, seed=3, augment=True, image_size=16, workers=2)
    # out of order, across epochs, repeated: each is the pure function of (seed, epoch, k)
    for e, k in [(1, 1), (1, 0), (1, 1), (0, 0), (0, 1), (1, 1)]:
        x, y = pooled.batch(e, k)
        expected = streamed[k] if e == 1 else inline.batch(e, k)
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    assert not torch.equal(pooled.batch(0, 1)[0], streamed[1][0])  # another epoch, other crops
    with pytest.raises(IndexError):
        pooled.batch(0, 2)


def test_rebatch_and_the_unaugmented_search_valid_batches(folder):
    ds = load_dataset("imagenet", "train", folder)
    valid = FolderLoader(ds, 4, seed=1, augment=False, image_size=16)
    x, y = valid.batch(0, 0)
    assert torch.equal(valid.batch(5, 0)[0], valid.batch(5, 0)[0])  # resize + centre crop: no randomness
    whole = valid.rebatch(12, seed=0, shuffle=False)  # every image once, in storage order, unaugmented
    xs, ys = whole.batch(0, 0)
    assert xs.shape == (12, 3, 16, 16) and ys.tolist() == ds.labels.tolist()
    order = valid.batches.order(0)[:4]
    assert torch.equal(x, xs[order]) and torch.equal(y, ys[order])
    crops = valid.rebatch(6, seed=0, shuffle=True, drop_last=True, augment=True)
    assert len(crops) == 2 and crops.batch(0, 1)[0].shape == (6, 3, 16, 16) and crops.augment and not crops.jitter
    with pytest.raises(UserError, match="cutout applies to in-memory datasets"):
        valid.rebatch(4, seed=0, shuffle=True, augment=True, cutout=8)


def test_a_file_that_does_not_decode_in_the_pool_is_one_line(folder):
    (folder / "train" / "n02" / "n02_1.JPEG").write_bytes(b"\xff\xd8 truncated")
    loader = FolderLoader(load_dataset("imagenet", "train", folder), 12, seed=0, augment=False, workers=2)
    with pytest.raises(UserError, match="n02_1.JPEG: not a readable image") as e:
        loader.batch(0, 0)
    assert "\n" not in str(e.value)


def test_a_missing_pillow_is_one_line(folder, monkeypatch):
    ds = load_dataset("imagenet", "train", folder)  # listing needs no Pillow
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.delitem(sys.modules, "archselect.data.jpeg", raising=False)
    monkeypatch.delattr("archselect.data.jpeg", raising=False)
    with pytest.raises(UserError, match=r"needs Pillow: pip install 'archselect\[imagenet\]'"):
        FolderLoader(ds, 4, seed=0, augment=False)


def test_alpha_steps_read_the_held_out_batches_in_turn():
    """ProxylessNAS' i-th α step of an epoch reads held-out batch i (every batch serves, as the released code's
    iterator); weight-only steps read none, so the loop decodes none. DARTS pairs weight step k with batch k."""
    from archselect.config import SearchConfig
    from archselect.optimizers import OPTIMIZERS
    from archselect.spaces import get

    net = get("mobilenet", resolution=32, width_mult=0.25, stage_layers=[1] * 6, in_channels=3,
              num_classes=3).supernet()
    cfg = SearchConfig(optimizer="proxylessnas", epochs=3, options={"update_every": 3, "warmup_epochs": 1})
    opt = OPTIMIZERS.get("proxylessnas")(net, cfg, steps_per_epoch=9)

    def indices(epoch):
        out = []
        for step in range(9):
            out.append(opt.valid_batch_index(epoch, step, 2))
            opt.batch_index += 1  # what a step does to the rhythm
        opt.end_epoch(epoch)
        return out

    assert indices(0) == [None] * 9  # warm-up: weights only
    assert indices(1) == [None] * 9  # the first joint epoch has no α step (skip_first_alpha_epoch)
    assert indices(2) == [None, None, 0, None, None, 1, None, None, 0]
    darts = OPTIMIZERS.get("darts")(net, SearchConfig(), steps_per_epoch=9)
    assert [darts.valid_batch_index(0, k, 4) for k in (0, 5)] == [0, 1]
    darts.freeze_alpha()
    assert darts.valid_batch_index(0, 5, 4) is None


@pytest.mark.parametrize("resolution,side", [(224, 64), (32, 32)])
def test_the_memory_estimate_bounds_what_the_mobilenet_supernet_keeps(resolution, side):
    """config's estimate (from the layout's numbers, all blocks mixed) against the bytes autograd really keeps."""
    from archselect.config import SpaceConfig, mobilenet_activations
    from archselect.spaces import get

    layers = [2, 1, 1, 1, 1, 1]
    net = get("mobilenet", resolution=resolution, width_mult=0.5, stage_layers=layers, in_channels=3,
              num_classes=10).supernet().train()
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.randn(2, 3, side, side))
    space = SpaceConfig(name="mobilenet", resolution=resolution, width_mult=0.5, stage_layers=layers)
    estimate = 4 * 2 * mobilenet_activations(space, side, blocks=6)
    assert sum(kept.values()) <= estimate <= 3 * sum(kept.values())


def test_forked_workers_never_hold_the_run_lock(tmp_path):
    """A decoding worker forked while a run is locked drops its copy of the lock: were the search killed, the
    worker (alive until it notices) must not keep a --resume out. Closing the parent's descriptor without unlocking
    stands in for the kill."""
    import multiprocessing
    import os

    from archselect.runs import RunDir

    run = RunDir(tmp_path / "run").lock()
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    child = fork.Process(target=signal_then_sleep, args=(started,), daemon=True)
    child.start()
    try:
        assert started.wait(60)  # the child runs: its fork handlers have run
        os.close(run._lock_fd)  # the parent "dies": only the child's copy could still hold the lock
        run._lock_fd = None
        RunDir(tmp_path / "run").lock().unlock()
    finally:
        child.kill()
        child.join()


def signal_then_sleep(started):
    import time

    started.set()
    time.sleep(60)


# -- the CLI -----------------------------------------------------------------------------------------------------------

def search_args(folder, *extra):
    """The paper config, shrunk: 3 held-out images (one per class) train α, 9 the weights, 3 steps per epoch."""
    return ["--config", str(CONFIG), f"data.data_dir={folder}", "device=cpu", "threads=1", "data.image_size=32",
            "data.valid_size=3", "data.batch_size=3", "data.eval_batch_size=6", "data.workers=0",
            "space.width_mult=0.25", "space.stage_layers=[1,1,1,1,1,1]", "search.epochs=2",
            "search.options.warmup_epochs=0", "search.options.skip_first_alpha_epoch=false",
            "search.options.update_every=2", "search.checkpoint_every=1", *extra]


def metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def interrupt_after(monkeypatch, steps):
    """Ctrl-C during optimizer step `steps` + 1 (checkpoints after each step exist by then)."""
    done, step = [0], ProxylessNAS.step

    def counted(self, train, valid, epoch):
        if done[0] == steps:
            raise KeyboardInterrupt
        done[0] += 1
        return step(self, train, valid, epoch)
    monkeypatch.setattr(ProxylessNAS, "step", counted)


def test_search_and_select_on_an_imagenet_folder(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--out", str(run), *search_args(folder, "search.epochs=1")]) == 0, capsys.readouterr().err
    result = json.loads((run / "result.json").read_text())
    assert result["architecture"]["text"].startswith("mobilenet:")
    assert "valid_loss" in metrics(run)[0]  # the α step read a held-out batch
    options = "select.options={perturbation: {tune_epochs: 0, valid_batches: 1}}"
    assert main(["select", str(run), "--selector", "perturbation", options]) == 0  # magnitude: the search's own
    chosen = {p.stem: json.loads(p.read_text()) for p in (run / "selections").glob("*.json")}
    assert set(chosen) == {"magnitude", "perturbation"}
    assert chosen["magnitude"]["architecture"] == result["architecture"]
    assert chosen["perturbation"]["cost"]["forward"] > 0


def same_search(a, b) -> bool:
    x, y = (load_latest_checkpoint(r, "supernet")["supernet"] for r in (a, b))
    return metrics(a) == metrics(b) and all(torch.equal(x[k], y[k]) for k in y) and \
        json.loads((a / "result.json").read_text())["architecture"] == \
        json.loads((b / "result.json").read_text())["architecture"]


@pytest.mark.slow
def test_an_interrupted_imagenet_search_resumes_to_the_same_result(folder, tmp_path, capsys, monkeypatch):
    """Ctrl-C mid-epoch, then --resume: the training stream reopens mid-epoch, the held-out batches continue."""
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(["search", "--out", str(reference), *search_args(folder)]) == 0, capsys.readouterr().err
    assert len(metrics(reference)) == 2 and all("valid_loss" in r for r in metrics(reference))
    interrupt_after(monkeypatch, 4)
    assert main(["search", "--out", str(interrupted), *search_args(folder)]) != 0
    monkeypatch.undo()
    assert main(["search", "--resume", str(interrupted)]) == 0, capsys.readouterr().err
    assert same_search(interrupted, reference)


@pytest.mark.slow
def test_a_killed_imagenet_search_with_decoding_workers_resumes_to_the_same_result(folder, tmp_path, capsys):
    """SIGKILL with worker processes decoding (DataLoader's and the pool's), then --resume."""
    from killharness import kill_and_resume, saved_files

    args = search_args(folder, "data.workers=2", "search.epochs=3")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["search", "--out", str(reference), *args]) == 0, capsys.readouterr().err
    kills = kill_and_resume(["search", "--out", str(killed), *args], ["search", "--resume", str(killed)],
                            progress=lambda: saved_files(killed), kills=2, seed=0, max_delay=0.3, spread=6)
    assert kills, "no kill was delivered; make the tiny run longer"
    assert same_search(killed, reference)


def test_search_errors_on_imagenet_are_one_line(folder, tmp_path, capsys):
    def fails(*args):
        code = main(["search", "--out", str(tmp_path / "run"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        return code == 2 and len(err) == 1 and not (tmp_path / "run").exists() and err[0]

    assert "does not exist" in fails(*search_args(tmp_path / "nowhere"))
    assert "no train/ folder" in fails(*search_args(folder / "train"))
    assert "GiB of activations per search step" in fails(f"data.data_dir={folder}", "data.dataset=imagenet")
    assert "data.cutout applies to in-memory datasets" in fails(*search_args(folder, "data.cutout=8"))
