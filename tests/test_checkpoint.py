"""Checkpoints (issue 19 item 5): the training state as one binary file that Python and the
emitted C both read and write, so training stops on one side and resumes on the other with the
same results; a wrong, truncated or corrupted file is refused with nothing overwritten."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.native import checkpoint

ROOT = Path(__file__).resolve().parent.parent
ONE_LAYER = ROOT / "examples" / "one_layer.toml"
MLP = ROOT / "examples" / "mlp.toml"
_MODELS: dict = {}


def model(kind: str, dtype: str = "float32", spec: Path = ONE_LAYER):
    key = (kind, dtype, spec)
    if key not in _MODELS:
        opt = graphc.Adam(lr=1e-2) if kind == "adam" else graphc.SGD(lr=0.1, momentum=0.9)
        _MODELS[key] = graphc.compile(spec, dtype=dtype, optimizer=opt, threads=1)
    return _MODELS[key]


def batch(seed: int, n: int = 16):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)), rng.integers(0, 10, n).astype(np.int32)


def trained(m, steps: int):
    state = m.train_state(graphc.init_params(m, seed=0))
    for s in range(steps):
        x, y = batch(s)
        m.train_step(state, x=x.astype(m.dtype), y=y)
    return state


@pytest.mark.parametrize("kind,dtype", [("adam", "float32"), ("sgd", "float64")])
def test_checkpoint_round_trip_resumes_to_the_same_bits(kind, dtype, tmp_path):
    m = model(kind, dtype)
    state = trained(m, 3)
    path = m.save_checkpoint(state, tmp_path / "run.ckpt")
    data = path.read_bytes()
    assert data[:8] == b"GRAPHCK\0" and len(data) == checkpoint.nbytes(checkpoint.tensors(m.csrc))
    back = m.load_checkpoint(path)
    assert back.step == state.step == 3
    for k in state.params:
        assert np.array_equal(back.params[k], state.params[k]), k
    for k in state.buffers:
        assert np.array_equal(back.buffers[k], state.buffers[k]), k
    assert m.load_state(path).step == 3                      # load_state knows the format too
    for s in (3, 4):                                         # and training goes on identically
        x, y = batch(s)
        m.train_step(state, x=x.astype(m.dtype), y=y)
        m.train_step(back, x=x.astype(m.dtype), y=y)
    for k in state.params:
        assert np.array_equal(back.params[k], state.params[k]), k


def test_checkpoint_refuses_another_model_a_short_file_and_a_flipped_bit(tmp_path):
    m = model("adam")
    good = m.save_checkpoint(trained(m, 1), tmp_path / "a.ckpt").read_bytes()
    other = model("sgd")                                     # the same network, another optimizer
    with pytest.raises(graphc.ArgumentError, match="another model, optimizer or element type"):
        other.load_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(graphc.ArgumentError, match="another model, optimizer or element type"):
        model("adam", "float64").load_checkpoint(tmp_path / "a.ckpt")
    (tmp_path / "short.ckpt").write_bytes(good[:-4])
    with pytest.raises(graphc.ArgumentError, match=f"{len(good) - 4} bytes.*{len(good)}"):
        m.load_checkpoint(tmp_path / "short.ckpt")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    (tmp_path / "bad.ckpt").write_bytes(bytes(flipped))
    with pytest.raises(graphc.ArgumentError, match="corrupted"):
        m.load_checkpoint(tmp_path / "bad.ckpt")
    (tmp_path / "x.npz").write_bytes(b"PK\3\4 not a checkpoint")
    with pytest.raises(graphc.ArgumentError, match="not a graphc checkpoint"):
        m.load_checkpoint(tmp_path / "x.npz")
    with pytest.raises(graphc.ArgumentError, match="cannot read"):
        m.load_checkpoint(tmp_path / "missing.ckpt")
    inference = graphc.compile(ONE_LAYER, threads=1)
    with pytest.raises(graphc.GraphcError, match="optimizer"):
        inference.save_checkpoint(None, tmp_path / "none.ckpt")


DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "one_layer.h"
#include "one_layer_checkpoint.h"

static unsigned char buffer[ONE_LAYER_CHECKPOINT_BYTES];
static unsigned char copy[ONE_LAYER_CHECKPOINT_BYTES];
%(decls)s

int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    long long steps = -1;
    size_t got;
    int status;
    (void)argc;
    if (!f) return 90;
    got = fread(buffer, 1, sizeof buffer, f);
    fclose(f);
    /* a corrupted copy is refused, and nothing is written */
    memcpy(copy, buffer, sizeof copy);
    copy[sizeof copy - 1] ^= 1;
    status = one_layer_checkpoint_read(copy, sizeof copy, &steps%(args)s);
    printf("corrupt %%d steps %%lld\n", status, steps);
    status = one_layer_checkpoint_read(buffer, got - 1, &steps%(args)s);
    printf("short %%d\n", status);
    status = one_layer_checkpoint_read(buffer, got, &steps%(args)s);
    printf("read %%d steps %%lld\n", status, steps);
%(prints)s
    /* one more step counted, a param changed: written back for Python to read */
    %(first)s[0] += 1.0f;
    status = one_layer_checkpoint_write(copy, sizeof copy, steps + 1%(args)s);
    printf("write %%d\n", status);
    f = fopen(argv[2], "wb");
    if (!f) return 91;
    fwrite(copy, 1, sizeof copy, f);
    fclose(f);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("kind,dtype", [("adam", "float32"), ("sgd", "float64")])
def test_checkpoint_the_emitted_c_reads_what_python_wrote_and_python_reads_what_c_wrote(kind, dtype, tmp_path):
    m = model(kind, dtype)
    files = {p.name for p in m.export(tmp_path, standalone=True)}
    assert {"one_layer_checkpoint.c", "one_layer_checkpoint.h"} <= files
    assert "one_layer_checkpoint.c" in (tmp_path / "Makefile").read_text()
    items = checkpoint.tensors(m.csrc)
    decls = "\n".join(f"static {t.ctype} {t.cname}[{t.count}];" for t in items)
    args = "".join(f", {t.cname}" for t in items)
    prints = "\n".join(
        f'    for (size_t i = 0; i < {t.count}; ++i) printf("{t.cname} {"%.9g" if t.ctype == "float" else "%.17g"}\\n", (double){t.cname}[i]);'
        if t.ctype != "int64_t" else
        f'    for (size_t i = 0; i < {t.count}; ++i) printf("{t.cname} %lld\\n", (long long){t.cname}[i]);'
        for t in items)
    first = items[0].cname
    (tmp_path / "driver.c").write_text(DRIVER % dict(decls=decls, args=args, prints=prints, first=first))
    flags = ["-O1", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
    for cc in [c for c in ("gcc", "clang", "tcc") if shutil.which(c)]:
        subprocess.run([cc, *flags, "-o", f"driver_{cc}", "driver.c", "one_layer_checkpoint.c"],
                       cwd=tmp_path, check=True, capture_output=True, text=True)
    state = trained(m, 2)
    m.save_checkpoint(state, tmp_path / "in.ckpt")
    run = subprocess.run(["./driver_gcc", "in.ckpt", "out.ckpt"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for other in [c for c in ("clang", "tcc") if (tmp_path / f"driver_{c}").exists()]:   # the compilers agree
        again = subprocess.run([f"./driver_{other}", "in.ckpt", f"out_{other}.ckpt"], cwd=tmp_path,
                               capture_output=True, text=True)
        assert again.stdout == run.stdout, other
        assert (tmp_path / f"out_{other}.ckpt").read_bytes() == (tmp_path / "out.ckpt").read_bytes(), other
    lines = run.stdout.splitlines()
    assert lines[:4] == ["corrupt 13 steps -1", "short 10", "read 0 steps 2", *lines[3:4]]
    assert lines[-1] == "write 0"
    values: dict[str, list[float]] = {}
    for line in lines[3:-1]:
        name, value = line.split()
        values.setdefault(name, []).append(float(value))
    for t in items:
        source = state.params if t.role == "param" else state.buffers
        expected = np.asarray(source[t.key]).ravel()
        assert np.array_equal(np.array(values[t.cname]).astype(expected.dtype), expected), t.key  # %.9g/%.17g: exact
    back = m.load_checkpoint(tmp_path / "out.ckpt")
    assert back.step == (2 if "t" in state.buffers else 3)     # Adam's t, not the header's count, resumes
    changed = state.params[items[0].key].ravel().copy()
    changed[0] += 1.0
    assert np.array_equal(back.params[items[0].key].ravel(), changed)
    for t in items[1:]:
        source, other = (state.params, back.params) if t.role == "param" else (state.buffers, back.buffers)
        if t.key != "t":
            assert np.array_equal(source[t.key], other[t.key]), t.key
