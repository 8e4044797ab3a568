"""Label histograms for register_profiling from the usual containers of a node's data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedstrat.clients import dataset_labels, label_histogram, label_profile

LABELS = np.array([0, 2, 2, 1, 2, 0, 3])
WANT = [2.0, 1.0, 3.0, 1.0, 0.0]


def test_numpy_list_and_pandas():
    pd = pytest.importorskip("pandas")
    for source in (LABELS, LABELS.tolist(), pd.Series(LABELS),
                   pd.DataFrame({"x": np.zeros(7), "label": LABELS})):
        assert label_histogram(source, num_classes=5).tolist() == WANT
    hist, n = label_profile(pd.DataFrame({"y": LABELS}), num_classes=5, label_key="y")
    assert hist.tolist() == WANT and n == 7


def test_string_classes_and_errors():
    names = np.array(["cat", "dog", "dog"])
    assert label_histogram(names, classes=["bird", "cat", "dog"]).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="not in classes"):
        label_histogram(names, classes=["cat"])
    with pytest.raises(ValueError, match="num_classes"):
        label_histogram(LABELS)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        label_histogram(LABELS, num_classes=3)


def test_torch_loaders_and_datasets():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, Subset, TensorDataset

    x = torch.zeros(7, 2)
    y = torch.as_tensor(LABELS)
    ds = TensorDataset(x, y)
    assert label_histogram(DataLoader(ds, batch_size=3), num_classes=5).tolist() == WANT
    sub = Subset(ds, [1, 2, 4])
    assert label_histogram(DataLoader(sub, batch_size=2), num_classes=5).tolist() == [0, 0, 3,
                                                                                      0, 0]

    class Vision(torch.utils.data.Dataset):  # torchvision style: .targets
        targets = LABELS.tolist()

        def __len__(self):
            return 7

        def __getitem__(self, i):
            raise AssertionError("inputs must not be loaded")

    assert label_histogram(DataLoader(Vision(), batch_size=4), num_classes=5).tolist() == WANT

    class DictBatches(torch.utils.data.Dataset):  # only iterable: dict batches
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return {"img": torch.zeros(2), "label": int(LABELS[i])}

    loader = DataLoader(DictBatches(), batch_size=3)
    assert dataset_labels(loader).tolist() == LABELS.tolist()  # one pass over the batches


def test_the_profiling_handler_imports_without_torch():
    # someone else's numpy ClientApp adds register_profiling: no torch import on its nodes
    code = ("import sys; from fedstrat.clients import register_profiling, label_profile; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from fedstrat.clients import make_client_app; assert 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
