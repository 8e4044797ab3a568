"""Local-file loaders on tiny synthetic files in the real formats; missing/corrupt file errors."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from fedstrat.data import DataError, load_dataset
from fedstrat.data.ctr import INT_BUCKETS, log_bucket


# ----------------------------------------------------------------------------- IDX (MNIST)
def idx_bytes(arr: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.astype(np.uint8).tobytes()
    )


def write_idx_set(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        arrays[prefix] = (imgs, labels)
        img_name = f"{prefix}-images-idx3-ubyte" + (".gz" if gz else "")
        data = idx_bytes(imgs)
        (folder / img_name).write_bytes(gzip.compress(data) if gz else data)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return arrays


def test_mnist_idx_roundtrip(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path / "mnist")
    ds = load_dataset("mnist", root=str(tmp_path))
    assert ds.x.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    np.testing.assert_allclose(ds.x[:, 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, arrays["train"][1])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])


def test_fashion_mnist_torchvision_layout_and_env_var(tmp_path: Path, monkeypatch) -> None:
    arrays = write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=False, seed=1)
    monkeypatch.setenv("FEDSTRAT_DATA", str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.num_train == 12
    np.testing.assert_array_equal(ds.y, arrays["train"][1])


def test_mnist_missing_files_say_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FEDSTRAT_DATA", raising=False)
    with pytest.raises(DataError, match="FEDSTRAT_DATA") as err:
        load_dataset("mnist")
    assert "root" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=str(tmp_path / "empty"))
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path / "empty" / "mnist") in msg
    assert "FEDSTRAT_DATA" in msg


def test_mnist_corrupt_files(tmp_path: Path) -> None:
    folder = tmp_path / "trunc" / "mnist"
    write_idx_set(folder, gz=False)
    data = (folder / "train-images-idx3-ubyte").read_bytes()
    (folder / "train-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", root=str(tmp_path / "trunc"))

    folder = tmp_path / "magic" / "mnist"
    write_idx_set(folder, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x12\x34\x56\x78garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("mnist", root=str(tmp_path / "magic"))

    folder = tmp_path / "count" / "mnist"
    write_idx_set(folder, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", root=str(tmp_path / "count"))

    folder = tmp_path / "badgz" / "mnist"
    write_idx_set(folder, gz=True)
    gzpath = folder / "train-images-idx3-ubyte.gz"
    gzpath.write_bytes(gzpath.read_bytes()[:40])
    with pytest.raises(DataError, match="train-images"):
        load_dataset("mnist", root=str(tmp_path / "badgz"))


# ----------------------------------------------------------------------------- CIFAR-10
def cifar_batches(seed: int = 0, n: int = 4) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, size=n).tolist(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n,
        }
        out[name] = pickle.dumps(d)
    return out


def test_cifar10_folder_and_tarball(tmp_path: Path) -> None:
    batches = cifar_batches()
    folder = tmp_path / "a" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, raw in batches.items():
        (folder / name).write_bytes(raw)
    ds = load_dataset("cifar10", root=str(tmp_path / "a"))
    assert ds.x.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    first = pickle.loads(batches["data_batch_1"])
    np.testing.assert_allclose(ds.x[:4], first[b"data"].reshape(4, 3, 32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y[:4], first[b"labels"])

    (tmp_path / "b").mkdir()
    with tarfile.open(tmp_path / "b" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, raw in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    ds2 = load_dataset("cifar10", root=str(tmp_path / "b"))
    np.testing.assert_array_equal(ds2.x, ds.x)
    np.testing.assert_array_equal(ds2.y_test, ds.y_test)


def test_cifar10_missing_and_corrupt(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="data_batch_1") as err:
        load_dataset("cifar10", root=str(tmp_path / "none"))
    assert "cifar-10-batches-py" in str(err.value)
    folder = tmp_path / "bad" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, raw in cifar_batches().items():
        (folder / name).write_bytes(raw)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root=str(tmp_path / "bad"))
    (tmp_path / "tar").mkdir()
    (tmp_path / "tar" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8bjunk")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=str(tmp_path / "tar"))


# ----------------------------------------------------------------------------- MovieLens-1M
ML1M_RATINGS = """1::10::5::978300760
1::20::3::978302109
2::10::4::978301968
2::30::1::978300275
3::20::4::978824291
3::30::2::978302268
3::10::5::978302039
4::20::3::978300719
4::30::4::978302268
5::10::2::978301368
"""
ML1M_USERS = """1::F::1::10::48067
2::M::56::16::70072
3::M::25::15::55117
4::M::45::7::02460
5::F::18::20::T8H1N
"""
ML1M_MOVIES = """10::GoldenEye (1995)::Action|Adventure|Thriller
20::Big Night (1996)::Drama
30::Metropolis (1926)::Sci-Fi
"""


def write_ml1m(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(ML1M_RATINGS, encoding="latin-1")
    (folder / "users.dat").write_text(ML1M_USERS, encoding="latin-1")
    (folder / "movies.dat").write_text(ML1M_MOVIES, encoding="latin-1")


def test_movielens1m_dat_files(tmp_path: Path) -> None:
    write_ml1m(tmp_path / "ml-1m")
    ds = load_dataset("movielens-1m", root=str(tmp_path), test_fraction=0.2)
    assert ds.task == "ctr" and ds.num_train == 8 and ds.num_test == 2
    assert ds.field_names == ["user", "item", "gender", "age", "occupation", "zip", "genre", "year"]
    # users 5, items 3, genders 2, ages 5, occupations 5, zip regions {4,7,5,0,T}, genres 3,
    # decades {1990s, <1940}; each + 1 "unknown" id
    assert ds.field_dims == [d + 1 for d in [5, 3, 2, 5, 5, 5, 3, 2]]
    y_all = np.concatenate([ds.y, ds.y_test])
    assert sorted(y_all.tolist()) == sorted([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    assert (ds.x < np.array(ds.field_dims)).all()
    assert set(ds.keys) == {"user", "occupation", "zip"}
    # temporal split: each user's latest ratings go to test
    t = load_dataset("movielens-1m", root=str(tmp_path), split="temporal", test_fraction=0.34)
    # round(0.34 * 2) = 1 for users 1, 2, 4; round(0.34 * 3) = 1 for user 3; 0 for user 5
    assert t.num_test == 4 and len(np.unique(t.keys_test["user"])) == 4
    # user 3's latest rating (item 20, timestamp 978824291) is in test, its others in train
    u3 = 2  # user ids are vocabulary ranks: "3" -> 2
    test_items_u3 = t.x_test[t.keys_test["user"] == u3, 1]
    assert test_items_u3.tolist() == [1]  # items "10","20","30" -> 0, 1, 2


def test_movielens1m_zip_and_hashing(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as zf:
        zf.writestr("ml-1m/ratings.dat", ML1M_RATINGS)
        zf.writestr("ml-1m/users.dat", ML1M_USERS)
        zf.writestr("ml-1m/movies.dat", ML1M_MOVIES)
    ds = load_dataset("movielens-1m", root=str(tmp_path), hashing=True, hash_buckets=64)
    assert ds.field_dims == [64] * 8
    gender_col = np.concatenate([ds.x[:, 2], ds.x_test[:, 2]])
    expected = {zlib.crc32(b"gender=F") % 64, zlib.crc32(b"gender=M") % 64}
    assert set(gender_col.tolist()) == expected  # the documented stable hash


def test_movielens1m_missing_and_corrupt(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="ratings.dat") as err:
        load_dataset("movielens-1m", root=str(tmp_path / "e"))
    assert "ml-1m" in str(err.value)
    write_ml1m(tmp_path / "c" / "ml-1m")
    (tmp_path / "c" / "ml-1m" / "users.dat").write_text("1::F::1\n")
    with pytest.raises(DataError, match="users.dat"):
        load_dataset("movielens-1m", root=str(tmp_path / "c"))


# ----------------------------------------------------------------------------- Criteo
def criteo_line(label: int, ints: list, cats: list) -> str:
    return "\t".join([str(label), *("" if v is None else str(v) for v in ints), *cats])


def write_criteo(path: Path, n: int = 30, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        ints = [None if rng.random() < 0.2 else int(rng.integers(-2, 5000)) for _ in range(13)]
        cats = ["" if rng.random() < 0.2 else f"{rng.integers(0, 50):08x}" for _ in range(26)]
        lines.append(criteo_line(i % 2, ints, cats))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_log_bucket_values() -> None:
    v = np.array([np.nan, -3, 0, 1, 2, 3, 1023, 1e30])
    np.testing.assert_array_equal(log_bucket(v), [0, 1, 2, 3, 3, 4, 12, INT_BUCKETS - 1])


def test_criteo_train_txt(tmp_path: Path) -> None:
    lines = write_criteo(tmp_path / "criteo" / "train.txt")
    ds = load_dataset("criteo", root=str(tmp_path), hash_buckets=100, test_fraction=0.2)
    assert ds.num_train == 24 and ds.num_test == 6
    assert ds.x.shape == (24, 39) and ds.x.dtype == np.int64 and ds.y.dtype == np.float32
    assert ds.field_dims == [INT_BUCKETS] * 13 + [100] * 26
    assert (ds.x < np.array(ds.field_dims)).all() and (ds.x >= 0).all()
    assert ds.y.sum() + ds.y_test.sum() == 15
    # hashed categorical of a known row: find row 0 via the full ordering of a max_rows=1 load
    one = load_dataset(
        "criteo", root=str(tmp_path), hash_buckets=100, max_rows=2, test_fraction=0.5
    )
    row0 = lines[0].split("\t")
    x0 = np.concatenate([one.x, one.x_test])
    expect_c1 = zlib.crc32(f"C1={row0[14]}".encode()) % 100
    assert expect_c1 in x0[:, 13].tolist()


def test_criteo_gzip_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "plain" / "train.txt"
    write_criteo(src, n=10)
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "train.txt.gz").write_bytes(gzip.compress(src.read_bytes()))
    a = load_dataset("criteo", root=str(tmp_path / "plain"), seed=3)
    b = load_dataset("criteo", root=str(tmp_path / "gz"), seed=3)
    np.testing.assert_array_equal(a.x, b.x)

    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="train.txt") as err:
        load_dataset("criteo", root=str(tmp_path / "none"))
    assert str(tmp_path / "none" / "criteo") in str(err.value)

    short = tmp_path / "short" / "train.txt"
    short.parent.mkdir()
    short.write_text(src.read_text() + "1\t2\t3\n")
    with pytest.raises(DataError, match="columns"):
        load_dataset("criteo", root=str(tmp_path / "short"))

    badlabel = tmp_path / "label" / "train.txt"
    badlabel.parent.mkdir()
    badlabel.write_text("7" + src.read_text()[1:])  # first row's label 0 -> 7
    with pytest.raises(DataError, match="label"):
        load_dataset("criteo", root=str(tmp_path / "label"))

    with pytest.raises(ValueError, match="max_rows"):
        load_dataset("criteo", root=str(tmp_path / "plain"), max_rows=0)
