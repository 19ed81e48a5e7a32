import pickle

import pytest
import torch

from sweeper.data import FOLDER, cutout, load_cifar10, random_crop, random_flip, read_batch, split
from sweeper.errors import ConfigError, DataError
from tests.conftest import TEST_IMAGES, TRAIN_PER_BATCH, make_cifar


def test_reads_the_canonical_batches(cifar_root):
    data = load_cifar10(str(cifar_root))
    assert data.train_x.shape == (5 * TRAIN_PER_BATCH, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (TEST_IMAGES, 3, 32, 32)
    assert data.train_y.dtype == torch.int64 and set(data.train_y.tolist()) == set(range(10))


def test_loads_once_per_process(cifar_root, monkeypatch):
    """However the folder is named, and whether or not a download is allowed (the bench and
    train() ask differently: the first run of a bench read CIFAR-10 twice)."""
    first = load_cifar10(str(cifar_root))
    monkeypatch.chdir(cifar_root.parent)
    assert load_cifar10(str(cifar_root)) is first
    assert load_cifar10(str(cifar_root), False) is first
    assert load_cifar10(f"./{cifar_root.name}/../{cifar_root.name}", True) is first


def test_split_is_disjoint_deterministic_and_capped(cifar_root):
    data = load_cifar10(str(cifar_root))
    train, val, test = split(data, val_size=50, train_size=None, test_size=None, seed=0)
    assert (len(train), len(val), len(test)) == (250, 50, TEST_IMAGES)
    flat = data.train_x.flatten(1)
    def rows(s):
        return {tuple(r.tolist()) for r in s.x.flatten(1)}
    assert not rows(train) & rows(val)  # synthetic images are all distinct (noise)
    assert len(rows(train) | rows(val)) == len(flat)
    again, val_again, _ = split(data, 50, None, None, seed=0)
    assert torch.equal(val.x, val_again.x) and torch.equal(train.y, again.y)
    _, other_val, _ = split(data, 50, None, None, seed=1)
    assert not torch.equal(val.x, other_val.x)
    small_train, small_val, small_test = split(data, 50, train_size=20, test_size=30, seed=0)
    assert (len(small_train), len(small_test)) == (20, 30) and torch.equal(small_val.x, val.x)


def test_a_cap_above_the_images_there_are_is_said_not_silently_ignored(cifar_root, caplog):
    data = load_cifar10(str(cifar_root))
    train, _, test = split(data, 50, train_size=1000, test_size=30, seed=0)
    assert len(train) == 250 and len(test) == 30
    assert [r.getMessage() for r in caplog.records] == [
        "data.train_size=1000 is more than the 250 training images left after data.val_size=50: "
        "training on all 250"]
    caplog.clear()
    split(data, 50, train_size=250, test_size=TEST_IMAGES + 1, seed=0)
    assert [r.getMessage() for r in caplog.records] == [
        f"data.test_size={TEST_IMAGES + 1} is more than the {TEST_IMAGES} test images: "
        f"testing on all {TEST_IMAGES}"]


def test_a_validation_split_as_large_as_the_training_set_is_refused(cifar_root):
    with pytest.raises(ConfigError, match="data.val_size=300"):
        split(load_cifar10(str(cifar_root)), 300, None, None, seed=0)


def test_missing_root_names_data_root_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="data.root.*data.download=true"):
        load_cifar10(str(tmp_path / "nowhere"))


def corrupt(tmp_path, how):
    root = make_cifar(tmp_path / "root")
    path = root / FOLDER / "data_batch_3"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif how == "not a pickle":
        path.write_text("hello")
    elif how == "wrong shape":
        batch = pickle.loads(path.read_bytes(), encoding="bytes")
        batch[b"data"] = batch[b"data"][:, :100]
        path.write_bytes(pickle.dumps(batch))
    elif how == "bad labels":
        batch = pickle.loads(path.read_bytes(), encoding="bytes")
        batch[b"labels"] = [11] * len(batch[b"labels"])
        path.write_bytes(pickle.dumps(batch))
    elif how == "code":
        path.write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    return path


@pytest.mark.parametrize("how", ["truncated", "not a pickle", "wrong shape", "bad labels", "code"])
def test_a_truncated_or_malformed_batch_is_named(tmp_path, how):
    path = corrupt(tmp_path, how)
    with pytest.raises(DataError) as err:
        read_batch(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_random_crop_pads_and_crops_each_image_independently():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(64, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, size=32, pad=4, gen=gen)
    assert out.shape == (64, 3, 32, 32)
    assert len({tuple(o[0, 16, :2].tolist()) for o in out}) > 10  # many different offsets
    assert torch.equal(out[:, 0], out[:, 1])  # one offset per image, shared by its channels
    crops = random_crop(x, size=28, pad=0, gen=gen)
    assert crops.shape == (64, 3, 28, 28)
    for image in crops:  # every crop is a window of the original
        top, left = divmod(int(image[0, 0, 0]), 32)
        assert torch.equal(image, x[0, :, top:top + 28, left:left + 28])


def test_random_flip_mirrors_about_half_the_images():
    x = torch.randn(200, 3, 8, 8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped | kept).all() and 60 < flipped.sum() < 140


def test_cutout_zeroes_one_square_per_image():
    out = cutout(torch.ones(50, 3, 32, 32), 8, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum((1, 2))
    assert (zeros <= 64).all() and (zeros > 0).all() and (zeros == 64).sum() > 10
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)
