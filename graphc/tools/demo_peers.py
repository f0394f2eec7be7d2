"""The demo's training elsewhere, timed beside graphc's C: the one-layer network in plain NumPy
(the notes' closed forms) and any model in PyTorch eager (tools/torch_peer.py), each with the
same init, minibatch order and Adam, and the table `graphc demo` prints of the two.
"""
from __future__ import annotations

import time

import numpy as np


def numpy_fit(params: dict, X: np.ndarray, Y: np.ndarray, batch_size: int, epochs: int, seed: int,
              lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, dtype=np.float32):
    """Adam on the one-layer network with the closed forms of the notes:
    delta1 = yhat - y, dU = delta1^T h, db2 = sum delta1, delta2 = delta1 U o sgn(h),
    dW = delta2^T x, db1 = sum delta2 (each divided by the batch rows: J is a mean).
    Returns (params, per-epoch mean losses, per-epoch seconds)."""
    P = {k: np.array(v, dtype=dtype) for k, v in params.items()}
    M = {k: np.zeros_like(v) for k, v in P.items()}
    V = {k: np.zeros_like(v) for k, v in P.items()}
    X = X.astype(dtype)
    n_total = len(X)
    rng = np.random.default_rng(seed)
    history, times, t = [], [], 0
    for _ in range(epochs):
        order = rng.permutation(n_total)
        start_time = time.perf_counter()
        total = 0.0
        for start in range(0, n_total, batch_size):
            idx = order[start:start + batch_size]
            x, y = X[idx], Y[idx]
            n = len(idx)
            h = np.maximum(x @ P["W"].T + P["b1"], 0)
            theta = h @ P["U"].T + P["b2"]
            theta = theta - theta.max(axis=1, keepdims=True)
            e = np.exp(theta)
            s = e.sum(axis=1, keepdims=True)
            total += float(np.sum(np.log(s[:, 0]) - theta[np.arange(n), y]))
            d1 = e / s
            d1[np.arange(n), y] -= 1
            d1 /= n
            d2 = (d1 @ P["U"]) * (h > 0)
            G = {"W": d2.T @ x, "b1": d2.sum(axis=0), "U": d1.T @ h, "b2": d1.sum(axis=0)}
            t += 1
            step_size, bc2_sqrt = lr / (1 - beta1 ** t), np.sqrt(1 - beta2 ** t)
            for k, g in G.items():
                M[k] = beta1 * M[k] + (1 - beta1) * g
                V[k] = beta2 * V[k] + (1 - beta2) * g * g
                P[k] -= (step_size * M[k] / (np.sqrt(V[k]) / bc2_sqrt + eps)).astype(dtype)
        times.append(time.perf_counter() - start_time)
        history.append(total / n_total)
    return P, history, times


def numpy_accuracy(P, X, Y) -> float:
    h = np.maximum(X @ P["W"].T + P["b1"], 0)
    return float(np.mean(np.argmax(h @ P["U"].T + P["b2"], axis=1) == Y))


def torch_fit(graph, params: dict, X, Y, batch_size: int, epochs: int, seed: int, lr: float):
    """The same training in PyTorch eager (graphc/tools/torch_peer.py), one thread, Adam, the
    minibatch order of graphc's fit; None without PyTorch. (params, losses, seconds, peer)."""
    try:
        import torch
        from graphc.tools.torch_peer import TorchPeer
    except ImportError:
        return None
    peer = TorchPeer(graph, params, threads=1)
    optimizer = torch.optim.Adam(peer.trainable(), lr=lr)
    rng = np.random.default_rng(seed)
    losses, times = [], []
    for _ in range(epochs):
        order = rng.permutation(len(X))
        t = time.perf_counter()
        losses.append(peer.fit_epoch(optimizer, "loss", batch_size, order, x=X, y=Y))
        times.append(time.perf_counter() - t)
    return losses, np.array(times), peer


def compare_peers(model_name: str, peer_name: str, graph, init: dict, data: tuple, batch_size: int, epochs: int,
                  seed: int, lr: float, graphc_run: tuple, write) -> dict:
    """Train the same model elsewhere (one_layer: NumPy; otherwise PyTorch, when installed), write
    the timing table beside graphc's run (c_times: its seconds per epoch, its final loss, its test
    accuracy) and return the peer's figures (KEY_losses, KEY_test_accuracy, KEY_epoch_seconds,
    speedup); {} without PyTorch."""
    X_train, X_test, y_train, y_test = data
    c_times, c_loss, test_acc = graphc_run
    if model_name == "one_layer":
        P, peer_losses, peer_times = numpy_fit(init, X_train, y_train, batch_size, epochs, seed, lr)
        peer_test = numpy_accuracy(P, X_test, y_test)
    else:
        ran = torch_fit(graph, init, X_train, y_train, batch_size, epochs, seed, lr)
        if ran is None:
            write(f"\n(PyTorch is not installed: no {peer_name} timing to compare; pip install torch)")
            return {}
        peer_losses, peer_times, peer = ran
        peer_test = float((peer.predict("probs", x=X_test).argmax(axis=1) == y_test).mean())
    c_med, peer_med = float(np.median(c_times)), float(np.median(peer_times))
    write("")
    write(f"timing per epoch ({len(X_train)} rows, batch {batch_size}, {epochs} epochs; one thread each):")
    write(f"  {'':<24}{'median ms':>10}{'best ms':>9}{'us/step':>9}{'final loss':>12}{'test acc':>10}")
    steps = -(-len(X_train) // batch_size)
    for label, times, loss, acc in (("graphc C (fit)", c_times, c_loss, test_acc),
                                    (peer_name, peer_times, peer_losses[-1], peer_test)):
        med = float(np.median(times))
        write(f"  {label:<24}{med * 1e3:>10.2f}{min(times) * 1e3:>9.2f}{med / steps * 1e6:>9.1f}"
              f"{loss:>12.4f}{acc:>10.4f}")
    write(f"  speedup of graphc over {peer_name}: {peer_med / c_med:.1f}x (median), "
          f"{min(peer_times) / min(c_times):.1f}x (best)")
    key = "numpy" if model_name == "one_layer" else "torch"
    return {f"{key}_losses": peer_losses, f"{key}_test_accuracy": peer_test,
            f"{key}_epoch_seconds": peer_times, "speedup": peer_med / c_med}
