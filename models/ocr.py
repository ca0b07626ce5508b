"""Text-line images for a PP-OCR-style CTC recognizer: random words rendered with the DejaVu fonts Debian ships
(no download), greedy CTC decoding, and character agreement between two readers. Needs only numpy and Pillow
(the Paddle training script loads this file on its own).

The recognizer itself (`ocr_recognizer.onnx`: a PPLCNet-like BatchNorm backbone, an SVTR-like attention neck
and a CTC head) is trained and exported by Paddle with `models/data/make_ocr_recognizer.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHARSET = "0123456789abcdefghijklmnopqrstuvwxyz"  # class 0 is CTC's blank, class i + 1 is CHARSET[i]
HEIGHT, WIDTH = 32, 128
FONT_FOLDER = Path("/usr/share/fonts/truetype/dejavu")
RECOGNIZER = Path(__file__).parent / "data" / "ocr_recognizer.onnx"


def font_paths(folder: Path = FONT_FOLDER) -> list[Path]:
    """The text fonts of `folder` (DejaVu's math font left out: it has no plain Latin letters)."""
    fonts = sorted(p for p in folder.glob("*.ttf") if "Math" not in p.name)
    if not fonts:
        raise FileNotFoundError(f"no fonts under {folder} (Debian: apt install fonts-dejavu-core)")
    return fonts


def render(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` images [count, 3, 32, 128] normalised as PP-OCR does ((x/255 − 0.5)/0.5) and their words (3 to
    9 characters); font, size, position, contrast and noise drawn from `seed`."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = font_paths()
    images = np.empty((count, 3, HEIGHT, WIDTH), dtype=np.float32)
    words = []
    for index in range(count):
        word = "".join(rng.choice(list(CHARSET), size=int(rng.integers(3, 10))))
        background, ink = (int(v) for v in rng.choice([rng.integers(170, 256), rng.integers(0, 90)], 2,
                                                      replace=False))
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), 40)
        left, top, right, bottom = font.getbbox(word)
        glyphs = Image.new("L", (right - left + 2, bottom - top + 2), background)
        ImageDraw.Draw(glyphs).text((1 - left, 1 - top), word, font=font, fill=ink)
        height = int(rng.integers(14, 27))
        width = min(WIDTH - 4, max(1, round(glyphs.width * height / glyphs.height)))
        glyphs = glyphs.resize((width, height), Image.BILINEAR)
        canvas = Image.new("L", (WIDTH, HEIGHT), background)
        canvas.paste(glyphs, (int(rng.integers(2, WIDTH - width - 1)), int(rng.integers(0, HEIGHT - height + 1))))
        pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 6, (HEIGHT, WIDTH))
        images[index] = (np.clip(pixels, 0, 255) / 255.0 - 0.5) / 0.5
        words.append(word)
    return images, words


def decode(logits: np.ndarray) -> list[str]:
    """Greedy CTC decoding of [batch, time, classes] scores: best class per step, repeats merged, blanks dropped."""
    best = logits.argmax(axis=-1)
    texts = []
    for row in best:
        kept = row[np.r_[True, row[1:] != row[:-1]]]
        texts.append("".join(CHARSET[c - 1] for c in kept if c > 0))
    return texts


def read(model: str | Path, images: np.ndarray, batch: int = 64) -> list[str]:
    """The words an ONNX recognizer (`images` → [batch, time, classes]) reads, in ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [text for start in range(0, len(images), batch)
            for text in decode(session.run(None, {name: images[start:start + batch]})[0])]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def agreement(reference: list[str], texts: list[str]) -> float:
    """Character agreement with a reference reading: 1 − total edit distance / total reference length (≥ 0)."""
    errors = sum(edit_distance(r, t) for r, t in zip(reference, texts, strict=True))
    return max(0.0, 1.0 - errors / max(1, sum(len(r) for r in reference)))
