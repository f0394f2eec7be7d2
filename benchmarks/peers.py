"""The peers graphc is measured against: NumPy closed forms, PyTorch eager, JAX jit.

Every peer implements the same model as the benchmark specs: an MLP whose
layers are ``h = relu(h @ W.T + b)`` with a final linear layer ``theta = h @ W.T + b``,
``J = cross_entropy(theta, y)`` (mean over the batch, int labels), float32, and
plain SGD ``p -= lr * dJ/dp``. With layer sizes ``[Dx, Dh, Nc]`` it is the
one-layer network of the notes (``W, b1, U, b2``).

Each ``make_*`` returns an object with three zero-argument callables:

- ``step()``: one train step (forward + backward + SGD update, in place or by
  rebinding the parameters) on the fixed batch ``x, y``;
- ``infer()``: ``softmax(theta)`` for the fixed batch ``x`` (no labels, no loss);
- ``epoch()``: one epoch over ``xf, yf`` in shuffled mini-batches of ``batch``
  rows (what ``CompiledModel.fit(..., epochs=1)`` does); ``steps`` is the
  number of train steps it makes.

Every callable returns only after its result is computed (JAX blocks).
"""
from __future__ import annotations

import numpy as np


class Peer:
    name = "?"

    def __init__(self, step, infer, epoch, steps, version=""):
        self.step, self.infer, self.epoch, self.steps, self.version = step, infer, epoch, steps, version


# ---------------------------------------------------------------------- NumPy closed forms
def make_numpy(params, x, y, xf, yf, batch, lr=0.1, seed=0):
    """The notes' closed forms by hand: δ1 = softmax(θ) − onehot(y) (÷N for the mean),
    ∂J/∂U = δ1ᵀh, ∂J/∂b2 = Σδ1, δ2 = δ1 U ∘ sgn(h), ∂J/∂W = δ2ᵀx, ∂J/∂b1 = Σδ2.
    Layer by layer for deeper MLPs. float32 throughout, in-place where NumPy allows."""
    Ws = [p[0] for p in params]
    bs = [p[1] for p in params]
    L = len(Ws)
    f32 = np.float32

    def train(xb, yb):
        n = xb.shape[0]
        hs = [xb]
        h = xb
        for i in range(L):
            z = h @ Ws[i].T
            z += bs[i]
            if i < L - 1:
                np.maximum(z, 0, out=z)
            hs.append(z)
            h = z
        theta = h
        theta -= theta.max(axis=1, keepdims=True)
        np.exp(theta, out=theta)
        theta /= theta.sum(axis=1, keepdims=True)          # theta now holds softmax(θ)
        rows = np.arange(n)
        loss = -np.log(theta[rows, yb]).mean()
        d = theta
        d[rows, yb] -= 1
        d *= f32(1.0 / n)                                   # δ1 of the mean loss
        for i in range(L - 1, -1, -1):
            hin = hs[i]
            dW = d.T @ hin
            db = d.sum(axis=0)
            if i > 0:
                dh = d @ Ws[i]
                dh *= hin > 0                               # ∘ sgn(h): relu' read off h
                d = dh
            dW *= f32(lr)
            db *= f32(lr)
            Ws[i] -= dW
            bs[i] -= db
        return loss

    def step():
        return train(x, y)

    def infer():
        h = x
        for i in range(L):
            z = h @ Ws[i].T
            z += bs[i]
            if i < L - 1:
                np.maximum(z, 0, out=z)
            h = z
        h -= h.max(axis=1, keepdims=True)
        np.exp(h, out=h)
        h /= h.sum(axis=1, keepdims=True)
        return h

    rng = np.random.default_rng(seed)
    steps = xf.shape[0] // batch

    def epoch():
        perm = rng.permutation(xf.shape[0])
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            train(xf[idx], yf[idx])

    return Peer(step, infer, epoch, steps, np.__version__)


# ---------------------------------------------------------------------- PyTorch eager
def make_torch(params, x, y, xf, yf, batch, lr=0.1, seed=0, threads=1):
    """PyTorch eager as people write it: nn.functional ops, loss.backward(), optim.SGD."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    Ws = [torch.tensor(np.array(p[0]), requires_grad=True) for p in params]
    bs = [torch.tensor(np.array(p[1]), requires_grad=True) for p in params]
    L = len(Ws)
    opt = torch.optim.SGD([t for pair in zip(Ws, bs) for t in pair], lr=lr)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    txf, tyf = torch.from_numpy(xf), torch.from_numpy(yf.astype(np.int64))

    def logits(h):
        for i in range(L):
            h = F.linear(h, Ws[i], bs[i])
            if i < L - 1:
                h = F.relu(h)
        return h

    def train(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(logits(xb), yb)
        loss.backward()
        opt.step()
        return loss

    def step():
        return train(tx, ty)

    def infer():
        with torch.inference_mode():
            return F.softmax(logits(tx), dim=1)

    gen = torch.Generator().manual_seed(seed)
    steps = xf.shape[0] // batch

    def epoch():
        perm = torch.randperm(xf.shape[0], generator=gen)
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            train(txf[idx], tyf[idx])

    return Peer(step, infer, epoch, steps, torch.__version__)


# ---------------------------------------------------------------------- JAX jit
def make_jax(params, x, y, xf, yf, batch, lr=0.1, seed=0):
    """JAX: jit-compiled train step with donated parameters; the epoch is one jitted
    lax.scan over the shuffled mini-batches (JAX's best practice for a training loop)."""
    import jax
    import jax.numpy as jnp
    p0 = [(jnp.asarray(W), jnp.asarray(b)) for W, b in params]
    L = len(p0)
    jx, jy = jnp.asarray(x), jnp.asarray(y)
    jxf, jyf = jnp.asarray(xf), jnp.asarray(yf)
    steps = xf.shape[0] // batch

    def logits(p, h):
        for i, (W, b) in enumerate(p):
            h = h @ W.T + b
            if i < L - 1:
                h = jax.nn.relu(h)
        return h

    def loss_fn(p, xb, yb):
        theta = logits(p, xb)
        lse = jax.nn.logsumexp(theta, axis=1)
        return jnp.mean(lse - jnp.take_along_axis(theta, yb[:, None], axis=1)[:, 0])

    def sgd(p, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), loss

    jstep = jax.jit(sgd, donate_argnums=0)
    jinfer = jax.jit(lambda p, xb: jax.nn.softmax(logits(p, xb), axis=1))

    def run_epoch(p, key):
        perm = jax.random.permutation(key, xf.shape[0])[:steps * batch]
        xs = jxf[perm].reshape(steps, batch, -1)
        ys = jyf[perm].reshape(steps, batch)
        p, losses = jax.lax.scan(lambda c, b: sgd(c, b[0], b[1]), p, (xs, ys))
        return p, losses

    jepoch = jax.jit(run_epoch, donate_argnums=0)
    state = {"p": p0, "key": jax.random.PRNGKey(seed)}

    def step():
        state["p"], loss = jstep(state["p"], jx, jy)
        return loss.block_until_ready()

    def infer():
        return jinfer(state["p"], jx).block_until_ready()

    def epoch():
        state["key"], k = jax.random.split(state["key"])
        state["p"], losses = jepoch(state["p"], k)
        return losses.block_until_ready()

    return Peer(step, infer, epoch, steps, jax.__version__)


def available(name: str) -> str | None:
    """The peer's version if it can be imported, else None."""
    try:
        if name == "torch":
            import torch
            return torch.__version__
        if name == "jax":
            import jax
            return jax.__version__
    except Exception:
        return None
    return None
