"""Model, data and training (PyTorch).

Data: scikit-learn's bundled 8x8 digits (offline), 80/20 train/test split with a fixed seed,
the train split partitioned over the nodes by Dirichlet(alpha) label skew. Model: a small CNN
with BatchNorm (its integer ``num_batches_tracked`` buffer travels with the weights).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 10
SEED = 42


class Net(nn.Module):
    """Conv(1->16, 3x3) + BatchNorm + ReLU + MaxPool(2) -> Linear(16*3*3 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 3 * 3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.flatten(1))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    order = np.random.default_rng(SEED).permutation(len(y))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


@lru_cache(maxsize=4)
def _partition(num_partitions: int, alpha: float) -> list[np.ndarray]:
    _, y, _, _ = _digits()
    rng = np.random.default_rng(SEED)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_partitions, alpha)))[:-1] * len(idx))
        for k, chunk in enumerate(np.split(idx, cuts.astype(int))):
            parts[k].extend(chunk.tolist())
    for k in range(num_partitions):
        if len(parts[k]) < 2:
            parts[k].extend(rng.integers(len(y), size=2).tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def load_data(partition_id: int, num_partitions: int, alpha: float = 0.3,
              batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    """``(trainloader, testloader)``: this partition's train data and the shared test split."""
    x, y, xt, yt = _digits()
    idx = _partition(num_partitions, alpha)[partition_id]
    train = TensorDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
    test = TensorDataset(torch.from_numpy(xt), torch.from_numpy(yt))
    gen = torch.Generator().manual_seed(partition_id)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
            DataLoader(test, batch_size=256))


def train(net: Net, loader: DataLoader, epochs: int, lr: float) -> float:
    """SGD on cross-entropy; mean training loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    losses = []
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """``(loss, accuracy)``."""
    net.eval()
    total, loss, correct = 0, 0.0, 0
    for xb, yb in loader:
        out = net(xb)
        loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
        total += len(yb)
    return loss / total, correct / total
