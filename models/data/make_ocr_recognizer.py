"""Train and export `ocr_recognizer.onnx`: a PP-OCR-style text-line recognizer written in Paddle — a
PPLCNet-like backbone (depthwise-separable Conv-BN-HardSwish blocks, squeeze-excite), an SVTR-like neck (one
pre-norm transformer encoder layer) and a CTC head with softmax — trained on words rendered by `models/ocr.py`
and exported by paddle2onnx, which keeps BatchNormalization and stores weights as Constant nodes.

Runs in its own venv (Python 3.11): pip install paddlepaddle==2.6.2 paddle2onnx==1.3.1 pillow "numpy<2"
    python models/data/make_ocr_recognizer.py [--steps 3000]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("ocr", HERE.parent / "ocr.py")
ocr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ocr)


class ConvBN(nn.Layer):
    def __init__(self, cin: int, cout: int, kernel: int, stride=1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2D(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias_attr=False)
        self.bn = nn.BatchNorm2D(cout)

    def forward(self, x):
        return F.hardswish(self.bn(self.conv(x)))


class SqueezeExcite(nn.Layer):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2D(channels, channels // 4, 1)
        self.expand = nn.Conv2D(channels // 4, channels, 1)

    def forward(self, x):
        scale = F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * scale


class Separable(nn.Layer):
    def __init__(self, cin: int, cout: int, stride, se: bool = False) -> None:
        super().__init__()
        self.depthwise = ConvBN(cin, cin, 3, stride, groups=cin)
        self.se = SqueezeExcite(cin) if se else None
        self.pointwise = ConvBN(cin, cout, 1)

    def forward(self, x):
        x = self.depthwise(x)
        return self.pointwise(self.se(x) if self.se is not None else x)


class Recognizer(nn.Layer):
    def __init__(self, classes: int = len(ocr.CHARSET) + 1) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBN(3, 16, 3, 2), Separable(16, 32, 1), Separable(32, 64, (2, 1)), Separable(64, 64, 1),
            Separable(64, 128, (2, 1)), Separable(128, 128, 1, se=True), Separable(128, 256, (2, 2), se=True))
        self.pool = nn.AvgPool2D((2, 1))
        self.neck_in = ConvBN(256, 128, 1)
        self.encoder = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, activation="gelu", normalize_before=True)
        self.norm = nn.LayerNorm(128)
        self.head = nn.Linear(128, classes)

    def forward(self, x):
        x = self.neck_in(self.pool(self.backbone(x)))  # [N, 128, 1, T]
        x = self.norm(self.encoder(x.squeeze(2).transpose([0, 2, 1])))  # [N, T, 128]
        logits = self.head(x)
        return logits if self.training else F.softmax(logits, axis=-1)


def labels(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(w) for w in words)
    ids = np.zeros((len(words), width), dtype=np.int32)
    for row, word in enumerate(words):
        ids[row, : len(word)] = [ocr.CHARSET.index(c) + 1 for c in word]
    return ids, np.array([len(w) for w in words], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=str(HERE / "ocr_recognizer"))
    args = parser.parse_args()
    paddle.seed(0)
    start = time.time()
    images, words = ocr.render(args.steps * args.batch // 8, seed=1000)  # each image seen ~8 times
    test_images, test_words = ocr.render(512, seed=7)
    print(f"rendered {len(words)} training images in {time.time() - start:.0f} s", flush=True)
    model = Recognizer()
    schedule = paddle.optimizer.lr.OneCycleLR(max_learning_rate=3e-3, total_steps=args.steps)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=model.parameters(), weight_decay=1e-4)
    ctc = nn.CTCLoss(blank=0)
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        pick = rng.choice(len(words), args.batch, replace=False)
        ids, lengths = labels([words[i] for i in pick])
        logits = model(paddle.to_tensor(images[pick]))
        log_probs = F.log_softmax(logits, axis=-1).transpose([1, 0, 2])
        steps = paddle.full([args.batch], log_probs.shape[0], dtype="int64")
        loss = ctc(log_probs, paddle.to_tensor(ids), steps, paddle.to_tensor(lengths))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        if step % 250 == 0 or step == args.steps - 1:
            model.eval()
            with paddle.no_grad():
                read = ocr.decode(model(paddle.to_tensor(test_images)).numpy())
            model.train()
            exact = np.mean([r == w for r, w in zip(read, test_words, strict=True)])
            print(f"step {step}: loss {float(loss):.3f}, test words read exactly {exact:.3f}, "
                  f"characters {ocr.agreement(test_words, read):.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, ocr.HEIGHT, ocr.WIDTH], "float32", "x")]
    paddle.onnx.export(model, args.out, input_spec=spec, opset_version=13)
    print(f"wrote {args.out}.onnx")


if __name__ == "__main__":
    main()
