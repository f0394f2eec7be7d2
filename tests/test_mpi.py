"""Data-parallel training over MPI (issue 19 item 4): `mpiexec -n 2` on this machine (loopback),
each rank with its own shard (of different sizes), against single-process training on the whole
batch; and a rank that fails stops every rank with a clear error instead of a hang."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mpi4py", reason="pip install 'graphc[mpi]' (mpi4py and the mpich wheels)")

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")

COMMON = f"""
import sys, numpy as np, graphc
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
ONE_LAYER = {str(ROOT / "examples" / "one_layer.toml")!r}
rng = np.random.default_rng(0)
X = rng.normal(size=(45, 64)).astype(np.float32)
Y = rng.integers(0, 10, 45).astype(np.int32)
CUT = 19                          # rank 0 holds rows 0..18, rank 1 rows 19..44: shards of two sizes


def report(line):                 # rank 0 prints every rank's line: output of two processes never mixes
    lines = comm.gather(line, root=0)
    if rank == 0:
        print(chr(10).join(lines), flush=True)
"""

EQUIVALENCE = COMMON + """
for opt in (graphc.Adam(lr=1e-2), graphc.SGD(lr=0.1, momentum=0.9)):
    m = graphc.compile(ONE_LAYER, optimizer=opt, threads=1)
    init = graphc.init_params(m, seed=0)
    single, dist = m.train_state(init), m.train_state(init)
    for s in range(20):                       # 20 steps, each on a different subset of the rows
        rows = np.flatnonzero((np.arange(45) * 7 + s) % 45 < 30)
        whole = m.train_step(single, x=X[rows], y=Y[rows])
        mine = rows[rows < CUT] if rank == 0 else rows[rows >= CUT]
        outs = m.train_step(dist, comm=comm, x=X[mine], y=Y[mine])
        assert abs(float(outs["loss"]) - float(whole["loss"])) < 1e-5, (s, outs["loss"], whole["loss"])
    diff = max(float(np.max(np.abs(dist.params[k] - single.params[k]))) for k in init)
    others = comm.allgather({k: v.copy() for k, v in dist.params.items()})
    same = all(np.array_equal(others[0][k], others[1][k]) for k in init)
    assert dist.step == single.step == 20
    report(f"{type(opt).__name__} {rank} diff {diff:.2e} same {same}")

m = graphc.compile(ONE_LAYER, optimizer=graphc.Adam(lr=1e-2), threads=1)
init = graphc.init_params(m, seed=0)
single, dist = m.train_state(init), m.train_state(init)
h1 = m.fit(single, x=X, y=Y, batch_size=8, epochs=3, seed=4, progress=False)
shard = slice(0, CUT) if rank == 0 else slice(CUT, 45)
h2 = m.fit(dist, x=X[shard], y=Y[shard], batch_size=8, epochs=3, seed=4, comm=comm)
diff = max(float(np.max(np.abs(dist.params[k] - single.params[k]))) for k in init)
hist = max(abs(a - b) for a, b in zip(h1, h2))
report(f"fit {rank} diff {diff:.2e} history {hist:.2e} steps {dist.step} {single.step}")
"""

FAILURE = COMMON + """
m = graphc.compile(ONE_LAYER, optimizer=graphc.Adam(lr=1e-2), threads=1)
state = m.train_state(graphc.init_params(m, seed=0))
before = {k: v.copy() for k, v in state.params.items()}
y = Y[:10].copy()
if rank == 1:
    y[3] = 99                              # out of range: this rank's part fails
try:
    m.train_step(state, comm=comm, x=X[:10], y=y)
    line = f"rank {rank}: no error"
except graphc.GraphcError as e:
    kept = all(np.array_equal(state.params[k], before[k]) for k in before)
    line = f"rank {rank}: {type(e).__name__}: {str(e).splitlines()[0]} | kept {kept}"
report(line)
"""


def mpirun(tmp_path: Path, script: str, timeout: int = 600) -> str:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(path)], capture_output=True, text=True,
                         timeout=timeout, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_mpi_two_ranks_train_as_one_process_on_the_whole_batch(tmp_path):
    lines = sorted(mpirun(tmp_path, EQUIVALENCE).splitlines())
    assert len(lines) == 6, lines
    for line in lines:
        words = line.split()
        if words[0] == "fit":
            assert float(words[3]) < 1e-5 and float(words[5]) < 1e-5 and words[7] == words[8], line
        else:
            assert float(words[3]) < 1e-5 and words[5] == "True", line      # and the ranks agree bit for bit


def test_mpi_a_rank_that_fails_stops_every_rank_with_a_clear_error(tmp_path):
    lines = sorted(mpirun(tmp_path, FAILURE, timeout=300).splitlines())
    assert len(lines) == 2, lines
    assert lines[0].startswith("rank 0: ExecutionError:") and "rank(s) 1 failed" in lines[0], lines
    assert lines[1].startswith("rank 1: ArgumentError:") and "out of range" in lines[1], lines
    assert all(line.endswith("kept True") for line in lines)     # no update happened anywhere
