"""Quality without fine-tuning, every criterion × ratio × {one-shot, sequential}, plus measured allocation and
depth against width; calibration data always disjoint from evaluation data. Each run is one `graphprune prune`
process: its wall time and peak RSS (its own VmHWM) are measured.

- digits CNN with BatchNorm (sklearn's bundled digits, trained here, seeded), legacy and dynamo exports:
  accuracy on the 360 test images; calibration on 128 training images;
- all-MiniLM-L6-v2 (real, legacy export): mean cosine of sentence embeddings to the dense model's on 256
  standard-library docstring sentences; calibration on 128 others (models.minilm.corpus_sentences); head and
  neuron ratio both = ratio, the hidden size kept;
- the PP-OCR-style text recognizer trained and exported by Paddle (models/data/ocr_recognizer.onnx), and the
  real PP-OCRv4 recognizer (`ppocr`, shipped in rapidocr-onnxruntime, 48x320 text lines): character
  agreement with the dense model's reading of 256 rendered words; calibration on 128 others;
- `ppocr-documents`: the same real recognizer on another task, printed document lines (`ocr.render_documents`:
  one to three words and numbers, 20-30 px DejaVu faces, resized to height 48 and right-padded to 320):
  calibration on 64 lines, agreement on 160 others from another seed.

    python benchmarks/bench_quality.py [--models digits-legacy digits-dynamo minilm ocr ppocr ppocr-documents]
        [--ratios 0.2 0.3 0.5] [--criteria l1 l2 ...] [--modes one-shot sequential data-free] [--defaults]
MiniLM needs graphprune[hf]; the CNNs need torch and scikit-learn; the recognizers Pillow, ppocr graphprune[ocr].
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from graphprune.cli.table import render
from graphprune.passes.importance import criteria_for, needs_data

MODELS = ["digits-legacy", "digits-dynamo", "minilm", "ocr", "ppocr", "ppocr-documents"]
MODES = {"one-shot": [], "sequential": ["--sequential"], "data-free": ["--data-free"]}
EXTRAS = [("obs", "measured", ["--allocation", "measured"]),
          ("obs", "measured+depth", ["--allocation", "measured", "--depth"])]
DEFAULTS = [(None, "default (chosen on held-out data)", []), (None, "default --no-validate", ["--no-validate"])]


CHILD = """import re, sys
from pathlib import Path
from graphprune.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    status = Path("/proc/self/status").read_text()
    print(re.search(r"VmHWM:\\s+(\\d+)", status).group(1), file=sys.stderr)
sys.exit(code)
"""


def prune(model: Path, output: Path, arguments: list[str]) -> tuple[dict, float, float]:
    """(the run's JSON report, wall seconds, peak RSS in MiB: the process's own VmHWM) of one `graphprune
    prune` process."""
    command = [sys.executable, "-c", CHILD, "prune", str(model), "-o", str(output), "--json", "-q", *arguments]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[3:])} failed: {lines[-2] if len(lines) > 1 else lines}")
    return json.loads(done.stdout), seconds, int(lines[-1]) / 1024


class Subject:
    """A model, its calibration arguments and its quality measure."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name, self.folder = name, folder
        self.data_free = ["--data-free"]
        if name.startswith("digits"):
            from graphprune.models.digits import export_both, load_split

            x_train, self.x_test, _, self.y_test = load_split()
            np.savez(folder / "calib.npz", x=x_train[:128])
            self.model = export_both(folder)[name.split("-")[1]]
            self.calibration = ["--calib", str(folder / "calib.npz"), "--batch-size", "64"]
        elif name == "ppocr-documents":  # another task than the one the methods were tuned on
            from graphprune.models import ocr

            self.model = ocr.packaged_recognizer()
            np.savez(folder / "calib.npz", x=ocr.render_documents(64, 1)[0])
            self.x_test = ocr.render_documents(160, 2)[0]
            self.reference = ocr.read(self.model, self.x_test)
            self.calibration = ["--calib", str(folder / "calib.npz"), "--batch-size", "64"]
            self.data_free += ["--image-size", *map(str, ocr.PACKAGED_SHAPE)]
        elif name in ("ocr", "ppocr"):
            from graphprune.models import ocr

            self.model, shape = (ocr.RECOGNIZER, (ocr.HEIGHT, ocr.WIDTH)) if name == "ocr" else \
                (ocr.packaged_recognizer(), ocr.PACKAGED_SHAPE)
            np.savez(folder / "calib.npz", x=ocr.render(128, 11, *shape)[0])
            self.x_test = ocr.render(256, 12, *shape)[0]
            self.reference = ocr.read(self.model, self.x_test)
            self.calibration = ["--calib", str(folder / "calib.npz"), "--batch-size", "64"]
            self.data_free += ["--image-size", *map(str, shape)]  # PP-OCRv4 leaves its line height open
        else:
            from graphprune.models.minilm import corpus_sentences, export_minilm, model_dir

            calibration, self.sentences = corpus_sentences()
            (folder / "calib.txt").write_text("\n".join(calibration[:128]) + "\n")
            self.sentences = self.sentences[:256]
            self.model = export_minilm(folder / "minilm.onnx", dynamo=False)
            self.calibration = ["--calib", str(folder / "calib.txt"), "--tokenizer",
                                str(model_dir() / "tokenizer.json")]

    def ratios(self, ratio: float) -> list[str]:
        if self.name != "minilm":
            return ["--ratio", str(ratio)]
        return ["--ratio", "0", "--head-ratio", str(ratio), "--neuron-ratio", str(ratio)]

    def quality(self, path: Path) -> float:
        if self.name.startswith("digits"):
            from graphprune.models.demo import accuracy

            return accuracy(path, self.x_test, self.y_test)
        if self.name.startswith(("ocr", "ppocr")):
            from graphprune.models.ocr import agreement, read

            return agreement(self.reference, read(path, self.x_test))
        from graphprune.models.minilm import mean_cosine

        return mean_cosine(self.model, path, self.sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.3, 0.5])
    parser.add_argument("--criteria", nargs="*", default=criteria_for(False))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--no-extras", action="store_true", help="skip measured allocation and depth rows")
    parser.add_argument("--defaults", action="store_true",
                        help="add the default method's rows (calibrated): chosen on held-out data, and --no-validate")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            folder.mkdir()
            subject = Subject(name, folder)
            rows.append([name, "-", "dense", "-", f"{subject.quality(subject.model):.4f}", "1.000", "", ""])
            for ratio in args.ratios:
                runs = [(c, mode, MODES[mode]) for c in args.criteria for mode in args.modes
                        if mode != "data-free" or needs_data(c)]  # else the same as one-shot
                runs += [] if args.no_extras else [(c, f"{label} {mode}", extra + MODES[mode])
                                                   for c, label, extra in EXTRAS for mode in args.modes]
                runs += [(c, label, extra) for c, label, extra in DEFAULTS] if args.defaults else []
                for criterion, mode, extra in runs:
                    target = folder / "pruned.onnx"
                    data = subject.data_free if "--data-free" in extra else subject.calibration
                    named = ["--criterion", criterion] if criterion else []
                    report, seconds, peak = prune(subject.model, target, [*named, *subject.ratios(ratio), *data,
                                                                          *(e for e in extra if e != "--data-free")])
                    params = report["after"]["params"] / report["before"]["params"]
                    rows.append([name, ratio, criterion or "obs", mode, f"{subject.quality(target):.4f}",
                                 f"{params:.3f}", f"{seconds:.1f}", f"{peak:.0f}"])
                    print(render(["model", "ratio", "criterion", "mode", "quality", "params", "wall s", "peak MiB"],
                                 rows[-1:]), flush=True)
                if name == "minilm" and not args.no_extras:  # the digits CNN has a single residual block
                    depth = ["--criterion", "l2", "--ratio", "0", "--block-ratio", str(ratio), *subject.calibration]
                    report, seconds, peak = prune(subject.model, folder / "pruned.onnx", depth)
                    params = report["after"]["params"] / report["before"]["params"]
                    rows.append([name, ratio, "block influence", "depth only",
                                 f"{subject.quality(folder / 'pruned.onnx'):.4f}", f"{params:.3f}", f"{seconds:.1f}",
                                 f"{peak:.0f}"])
    print("\nquality: digits accuracy on held-out test images; minilm embedding cosine to dense on held-out "
          "sentences; ocr character agreement with the dense reading of held-out words; no fine-tuning")
    print(render(["model", "ratio", "criterion", "mode", "quality", "params", "wall s", "peak MiB"], rows))


if __name__ == "__main__":
    main()
