"""Checkpoints that Python and the emitted C both read and write: a model's params and optimizer
state (and its step count) as one binary file, so that training can stop and resume with the same
results in Python or on a device.

In: a CompiledModel (or codegen's CSource, for emitted C) compiled with an optimizer, a TrainState.
Out: the file's bytes, a TrainState read back, and what templates/checkpoint.{c,h}.j2 print:
NAME_checkpoint.c/.h, whose NAME_checkpoint_read/_write do the same in C on a caller's buffer (no
I/O, no heap). The layout, little-endian whatever the host:

    offset  size  field
    0       8     magic "GRAPHCK" and a zero byte
    8       4     format version (1)
    12      4     bytes per real element: 4 (float) or 8 (double)
    16      4     CRC-32 of the layout text (the tensors' names, element types and shapes, in order):
                  a checkpoint of another model or optimizer is refused
    20      4     number of tensors
    24      8     optimizer steps taken (TrainState.step; Adam resumes from its t, a tensor below)
    32      4     CRC-32 (zlib's) of everything after the header
    36      4     zero
    40      ...   the tensors, in NAME_train_step's argument order (params, then optimizer state),
                  each its elements row-major: reals of the element size, int64 counts in 8 bytes
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphc.core.errors import ArgumentError, GraphcError

MAGIC = b"GRAPHCK\0"
VERSION = 1
HEADER_BYTES = 40
_HEADER = struct.Struct("<8sIIIIqII")


@dataclass(frozen=True)
class Tensor:
    """One array of the checkpoint: its TrainState key, role (param or state), C argument name,
    C element type, shape and documentation."""
    key: str
    role: str
    cname: str
    ctype: str
    shape: tuple
    doc: str

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype({"float": np.float32, "double": np.float64, "int64_t": np.int64}[self.ctype])


def tensors(csrc) -> list[Tensor]:
    """The params and optimizer state of csrc's NAME_train_step, in its argument order."""
    f = next((f for f in csrc.functions if f.name == "train_step"), None)
    if f is None or f.train_layout is None:
        raise GraphcError(f"{csrc.name}: a checkpoint holds a training state, but this model was compiled "
                          f"without an optimizer", hint="compile with optimizer=graphc.SGD(...) or Adam(...)")
    by_cname = {a.cname: a for a in f.args}
    out = []
    for role, key, cname in f.train_layout.step_args:
        if role in ("param", "state"):
            a = by_cname[cname]
            if role == "param":
                shape = tuple(csrc.forward_graph.params[key].shape)
            else:
                shape = tuple(f.train_layout.state[key][0])
            out.append(Tensor(key, role, cname, a.ctype, shape, a.shape_doc))
    return out


def layout_text(items: list[Tensor]) -> str:
    return ";".join(f"{t.role} {t.key} {t.ctype} {'x'.join(map(str, t.shape)) or 'scalar'}" for t in items)


def layout_crc(items: list[Tensor]) -> int:
    return zlib.crc32(layout_text(items).encode())


def nbytes(items: list[Tensor]) -> int:
    return HEADER_BYTES + sum(t.count * t.dtype.itemsize for t in items)


def to_bytes(model, state) -> bytes:
    """The checkpoint of `state` (a TrainState of `model`) as bytes."""
    items = tensors(model.csrc)
    parts = []
    for t in items:
        source = state.params if t.role == "param" else state.buffers
        arr = np.asarray(source[t.key])
        parts.append(np.ascontiguousarray(arr, dtype=t.dtype.newbyteorder("<")).tobytes())
    payload = b"".join(parts)
    header = _HEADER.pack(MAGIC, VERSION, model.dtype.itemsize, layout_crc(items), len(items), int(state.step),
                          zlib.crc32(payload), 0)
    return header + payload


def save(model, state, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(to_bytes(model, state))
    return path


def is_checkpoint(path: str | Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def from_bytes(model, data: bytes, where: str = "checkpoint"):
    """A new TrainState of `model` holding the checkpoint's values; ArgumentError naming what is wrong."""
    items = tensors(model.csrc)
    if len(data) < HEADER_BYTES or data[:len(MAGIC)] != MAGIC:
        raise ArgumentError(f"{where} is not a graphc checkpoint (it does not start with {MAGIC[:7].decode()!r})")
    magic, version, elem, crc_layout, count, step, crc_payload, _ = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ArgumentError(f"{where} is a graphc checkpoint of format {version}; this graphc reads format {VERSION}")
    if elem != model.dtype.itemsize or crc_layout != layout_crc(items) or count != len(items):
        raise ArgumentError(f"{where} holds the training state of another model, optimizer or element type "
                            f"than {model.name} ({model.dtype}, {len(items)} tensors: "
                            f"{', '.join(t.key for t in items)})",
                            hint="load it into the model and optimizer it was saved from")
    if len(data) != nbytes(items):
        raise ArgumentError(f"{where} has {len(data)} bytes; a checkpoint of {model.name} has {nbytes(items)} "
                            f"(a truncated or extended file)")
    payload = memoryview(data)[HEADER_BYTES:]
    if zlib.crc32(payload) != crc_payload:
        raise ArgumentError(f"{where} is corrupted: its contents do not match the CRC-32 in its header")
    arrays, offset = {}, 0
    for t in items:
        size = t.count * t.dtype.itemsize
        arrays[t.key] = np.frombuffer(payload[offset:offset + size], dtype=t.dtype.newbyteorder("<")).reshape(t.shape)
        offset += size
    state = model.train_state({t.key: arrays[t.key] for t in items if t.role == "param"})
    for t in items:
        if t.role == "state":
            state.buffers[t.key][...] = arrays[t.key]
    if "t" not in state.buffers:
        state.count_sgd_steps(int(step))
    return state


def load(model, path: str | Path):
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArgumentError(f"cannot read the checkpoint {path}: {e.strerror or e}") from None
    return from_bytes(model, data, where=str(path))


def c_context(csrc) -> dict:
    """What templates/checkpoint.{c,h}.j2 print."""
    items = tensors(csrc)
    return dict(name=csrc.name, tensors=items, types={t.ctype for t in items}, nbytes=nbytes(items), layout=layout_text(items),
                layout_crc=f"0x{layout_crc(items):08X}u", elem_bytes=np.dtype(csrc.dtype).itemsize,
                header_bytes=HEADER_BYTES, version=VERSION, guard=f"GRAPHC_{csrc.name.upper()}_CHECKPOINT_H")
