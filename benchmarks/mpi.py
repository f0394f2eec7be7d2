"""Data-parallel speed-up over MPI: the wide model's train step (Dx 1024, Dh 4096, Nc 1000, a
global batch of 256 rows, SGD) on 1 rank against 2 ranks on the same machine, each rank one
thread, each with half of the batch (train_step(comm=): gradients in C, an Allreduce, the update
in C). Prints a table with the machine. Needs mpi4py and mpiexec (pip install 'graphc[mpi]').

    python benchmarks/mpi.py [--steps 10] [--batch 256]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cpu_model  # noqa: E402

JOB = """
import sys, time, numpy as np, graphc
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
steps, batch = int(sys.argv[1]), int(sys.argv[2])
g = graphc.Graph("wide")
x = g.input("x", ("N", 1024)); y = g.input("y", ("N",), dtype="int32")
W = g.param("W", (4096, 1024)); b1 = g.param("b1", (4096,))
U = g.param("U", (1000, 4096)); b2 = g.param("b2", (1000,))
g.output("loss", graphc.cross_entropy(graphc.relu(x @ W.T + b1) @ U.T + b2, y))
m = graphc.compile(g, grad_of="loss", wrt=["W", "b1", "U", "b2"], optimizer=graphc.SGD(lr=0.01), threads=1)
state = m.train_state(graphc.init_params(m, seed=0))
rng = np.random.default_rng(0)
X = rng.normal(size=(batch, 1024)).astype(np.float32); Y = rng.integers(0, 1000, batch).astype(np.int32)
mine = slice(rank * batch // size, (rank + 1) * batch // size)
def step():
    if size == 1:
        m.train_step(state, x=X, y=Y)           # one process: the fused C train step
    else:
        m.train_step(state, comm=comm, x=X[mine], y=Y[mine])
step(); step()
times = []
for _ in range(steps):
    comm.Barrier()
    t = time.perf_counter()
    step()
    comm.Barrier()
    times.append(time.perf_counter() - t)
if rank == 0:
    print(f"{size} {sorted(times)[len(times) // 2] * 1e3:.1f}")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args(argv)
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if mpiexec is None:
        print("no mpiexec: pip install 'graphc[mpi]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.py"
        job.write_text(JOB)
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        rows = {}
        for ranks in (1, 2):
            run = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, str(job), str(args.steps), str(args.batch)],
                                 capture_output=True, text=True, env=env)
            if run.returncode:
                print(run.stdout + run.stderr, file=sys.stderr)
                return 1
            n, ms = run.stdout.split()
            rows[int(n)] = float(ms)
    cpu = cpu_model()
    print(f"wide train step (SGD), global batch {args.batch}, median of {args.steps}, one thread per rank")
    print("| ranks | ms per step | speed-up |")
    print("|---|---|---|")
    for n, ms in rows.items():
        print(f"| {n} | {ms:.1f} | {rows[1] / ms:.2f}x |")
    print(f"Machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}. "
          f"Command: python benchmarks/mpi.py --steps {args.steps} --batch {args.batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
