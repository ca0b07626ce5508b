"""Text-line images for a PP-OCR-style CTC recognizer: random words rendered with the DejaVu fonts Debian ships
(no download), greedy CTC decoding, and character agreement between two readers. Needs only numpy and Pillow
(the Paddle training script loads this file on its own).

The stand-in recognizer (`ocr_recognizer.onnx`: a PPLCNet-like BatchNorm backbone, an SVTR-like attention neck
and a CTC head) is trained and exported by Paddle with `models/data/make_ocr_recognizer.py`. The real one,
PP-OCRv4's (Paddle's ch_PP-OCRv4_rec converted by paddle2onnx, 6625 classes, its dictionary in its metadata),
ships inside the rapidocr-onnxruntime wheel (`graphprune[ocr]`): `packaged_recognizer()` finds it there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime

CHARSET = "0123456789abcdefghijklmnopqrstuvwxyz"  # class 0 is CTC's blank, class i + 1 is CHARSET[i]
HEIGHT, WIDTH = 32, 128
FONT_FOLDER = Path("/usr/share/fonts/truetype/dejavu")
RECOGNIZER = Path(__file__).parent / "data" / "ocr_recognizer.onnx"


PACKAGE = "rapidocr_onnxruntime"
PACKAGED = Path("models") / "ch_PP-OCRv4_rec_infer.onnx"
PACKAGED_SHAPE = (48, 320)  # the height and width PP-OCRv4's recognizer reads text lines at


def packaged_recognizer() -> Path:
    """The real PP-OCRv4 text recognizer inside the installed rapidocr-onnxruntime package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError("the real PP-OCRv4 recognizer ships in rapidocr-onnxruntime: "
                                "pip install 'graphprune[ocr]'")
    return path


def classes_of(model: str | Path) -> list[str]:
    """The characters a CTC recognizer's classes 1… stand for (see `session_classes`)."""
    return session_classes(_session(model))


def session_classes(session: onnxruntime.InferenceSession) -> list[str]:
    """The classes of a recognizer's ONNX Runtime session: PP-OCR exports carry their dictionary in the
    `character` metadata (a space follows it); otherwise the stand-in's CHARSET."""
    metadata = session.get_modelmeta().custom_metadata_map
    return [*metadata["character"].split("\n"), " "] if "character" in metadata else list(CHARSET)


def _session(model: str | Path) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def font_paths(folder: Path = FONT_FOLDER) -> list[Path]:
    """The text fonts of `folder` (DejaVu's math font left out: it has no plain Latin letters)."""
    fonts = sorted(p for p in folder.glob("*.ttf") if "Math" not in p.name)
    if not fonts:
        raise FileNotFoundError(f"no fonts under {folder} (Debian: apt install fonts-dejavu-core)")
    return fonts


def render(count: int, seed: int, height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, list[str]]:
    """`count` images [count, 3, height, width] normalised as PP-OCR does ((x/255 − 0.5)/0.5) and their words
    (3 to 9 characters, 44–84 % of the image's height); font, size, position, contrast and noise drawn from
    `seed`."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = font_paths()
    images = np.empty((count, 3, height, width), dtype=np.float32)
    words = []
    for index in range(count):
        word = "".join(rng.choice(list(CHARSET), size=int(rng.integers(3, 10))))
        background, ink = (int(v) for v in rng.choice([rng.integers(170, 256), rng.integers(0, 90)], 2,
                                                      replace=False))
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), 40)
        left, top, right, bottom = font.getbbox(word)
        glyphs = Image.new("L", (right - left + 2, bottom - top + 2), background)
        ImageDraw.Draw(glyphs).text((1 - left, 1 - top), word, font=font, fill=ink)
        text_height = int(rng.integers(14 * height // 32, 27 * height // 32))
        text_width = min(width - 4, max(1, round(glyphs.width * text_height / glyphs.height)))
        glyphs = glyphs.resize((text_width, text_height), Image.BILINEAR)
        canvas = Image.new("L", (width, height), background)
        canvas.paste(glyphs, (int(rng.integers(2, width - text_width - 1)),
                              int(rng.integers(0, height - text_height + 1))))
        pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 6, (height, width))
        images[index] = (np.clip(pixels, 0, 255) / 255.0 - 0.5) / 0.5
        words.append(word)
    return images, words


DOCUMENT_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")
DOCUMENT_WORDS = ("invoice total date amount paid due order number account balance street city phone email "
                  "name address customer item price quantity tax net gross page report summary payment bank "
                  "Berlin Paris London Madrid Vienna Prague Oslo Lisbon Rome Dublin Monday Friday March June "
                  "October Receipt Station Office Hotel Market Road Avenue North South West East Ltd GmbH").split()


def _document_line(rng: np.random.Generator) -> str:
    """One to three words and numbers as printed documents have them ("invoice total 2026", "Berlin 7.5")."""
    def token() -> str:
        kind = rng.integers(4)
        if kind == 0:
            return str(int(rng.integers(1, 10_000)))
        if kind == 1:
            return f"{rng.uniform(0, 1000):.{int(rng.integers(1, 3))}f}"
        word = str(rng.choice(DOCUMENT_WORDS))
        return word.capitalize() if rng.random() < 0.3 else word
    return " ".join(token() for _ in range(int(rng.integers(1, 4))))


def render_documents(count: int, seed: int, height: int = PACKAGED_SHAPE[0],
                     width: int = PACKAGED_SHAPE[1]) -> tuple[np.ndarray, list[str]]:
    """`count` document text lines as PP-OCR's recognizer is served them: dark ink on light paper in a DejaVu
    face at 20-30 px on a `height`-px line, resized to `height` keeping the aspect ratio (at most `width`), and
    right-padded to `width` with zeros after normalisation ((x/255 − 0.5)/0.5). A task unlike `render`'s
    random strings, for judging on data a method was not tuned on."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    faces = [FONT_FOLDER / name for name in DOCUMENT_FONTS]
    images = np.zeros((count, 3, height, width), dtype=np.float32)
    texts = []
    for index in range(count):
        text = _document_line(rng)
        font = ImageFont.truetype(str(faces[rng.integers(len(faces))]), int(rng.integers(20, 31)))
        left, top, right, bottom = font.getbbox(text)
        paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 70))
        line = Image.new("L", (right - left + 8, height), paper)
        ImageDraw.Draw(line).text((4 - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=ink)
        line = line.resize((min(width, line.width * height // line.height), height), Image.BILINEAR)
        pixels = np.asarray(line, dtype=np.float32) + rng.normal(0, 3, (height, line.width))
        images[index, :, :, :line.width] = (np.clip(pixels, 0, 255) / 255.0 - 0.5) / 0.5
        texts.append(text)
    return images, texts


def decode(logits: np.ndarray, classes: str | list[str] = CHARSET) -> list[str]:
    """Greedy CTC decoding of [batch, time, classes] scores: best class per step, repeats merged, blanks (class
    0) dropped; class i stands for classes[i − 1]."""
    best = logits.argmax(axis=-1)
    texts = []
    for row in best:
        kept = row[np.r_[True, row[1:] != row[:-1]]]
        texts.append("".join(classes[c - 1] for c in kept if c > 0))
    return texts


def read(model: str | Path, images: np.ndarray, batch: int = 64) -> list[str]:
    """The words an ONNX recognizer (`images` → [batch, time, classes]) reads, in ONNX Runtime."""
    session = _session(model)
    name, classes = session.get_inputs()[0].name, session_classes(session)
    return [text for start in range(0, len(images), batch)
            for text in decode(session.run(None, {name: images[start:start + batch]})[0], classes)]


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
