"""Text that ships with every Python installation, for the sequence demos: the standard library's
own source files, read at run time (no download), as characters of a 96-symbol vocabulary.

The vocabulary is the newline and the 95 printable ASCII characters (space to '~'); a tab
becomes four spaces and any other character '?'. `encode` and `decode` map text to int32 ids
and back; `split` cuts the ids into a train and a validation part; `windows` draws training
windows as nanoGPT's get_batch does (x = ids[s:s+T], y = ids[s+1:s+T+1]); `unigram_loss` is the
baseline a model must beat: the cross-entropy of predicting every character by its frequency
in the training text.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = VOCAB.index("?")
_TABLE = np.full(128, UNKNOWN, dtype=np.int32)
for _i, _c in enumerate(VOCAB):
    _TABLE[ord(_c)] = _i


def stdlib_text(max_chars: int = 2_000_000) -> str:
    """The top-level .py files of this Python's standard library, in name order, joined, up to
    max_chars characters (the same text for a given Python version)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        from graphc.core.errors import GraphcError
        raise GraphcError(f"no Python source files found in the standard library folder {root}",
                          hint="the sequence demos read the standard library's own .py files")
    return "".join(parts)[:max_chars]


def encode(text: str) -> np.ndarray:
    """int32 ids of `text` in VOCAB (a tab: four spaces; other characters: '?')."""
    text = text.replace("\t", "    ")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.full(codes.shape, UNKNOWN, dtype=np.int32)
    ascii_ = codes < 128
    ids[ascii_] = _TABLE[codes[ascii_]]
    return ids


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in np.asarray(ids).ravel())


def split(ids: np.ndarray, validation: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - validation) of the ids for training, the rest for validation."""
    cut = int(len(ids) * (1.0 - validation))
    return ids[:cut], ids[cut:]


def windows(ids: np.ndarray, context: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` windows at random offsets: x [count, context] and the next characters y."""
    if len(ids) <= context:
        from graphc.core.errors import ArgumentError
        raise ArgumentError(f"the text has {len(ids)} characters: too short for windows of {context} and their targets")
    starts = rng.integers(0, len(ids) - context, size=count)
    idx = starts[:, None] + np.arange(context)[None, :]
    return ids[idx].astype(np.int32), ids[idx + 1].astype(np.int32)


def unigram_loss(train: np.ndarray, validation: np.ndarray) -> float:
    """Cross-entropy (nats per character) on `validation` of the character frequencies of
    `train` (add-one smoothed over the vocabulary)."""
    counts = np.bincount(train, minlength=len(VOCAB)).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[validation].mean())
