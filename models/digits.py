"""Train the embedded demo model: a small residual CNN on sklearn's bundled 8x8 digits (no download).

Run `python -m graphprune.models.digits` (needs graphprune[train]); it rewrites models/data/digits_cnn.onnx
and digits_test.npz deterministically (seeded, single-threaded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from graphprune.models.export import export

DATA = Path(__file__).resolve().parent / "data"


class DigitsNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
        )
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width * 16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.fc(torch.flatten(self.down(x), 1))


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, digits.target.astype(np.int64), test_size=0.2, random_state=seed, stratify=digits.target)


def train(epochs: int = 30, seed: int = 0) -> tuple[DigitsNet, np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = load_split(seed)
    model = DigitsNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval(), x_test, y_test


def export_both(folder: Path) -> dict[str, Path]:
    """Train the demo network (seeded) and export it with each torch exporter: "legacy" folds BatchNorm into
    the convolutions, "dynamo" keeps BatchNormalization nodes (what data-free BN statistics can read)."""
    model, x_test, _ = train()
    return {name: export(model, torch.from_numpy(x_test[:2]), Path(folder) / f"digits_{name}.onnx",
                         dynamo=name == "dynamo", opset=17) for name in ("legacy", "dynamo")}


def main() -> None:
    model, x_test, y_test = train()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    DATA.mkdir(exist_ok=True)
    export(model, torch.from_numpy(x_test[:2]), DATA / "digits_cnn.onnx", dynamo=False, opset=17)
    np.savez_compressed(DATA / "digits_test.npz", x=x_test, y=y_test)
    print(f"test accuracy {accuracy:.4f}; wrote {DATA / 'digits_cnn.onnx'}")


if __name__ == "__main__":
    main()
