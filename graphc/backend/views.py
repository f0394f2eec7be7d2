"""Layout views: the layout ops of a lowered Graph that move no element get no kernel (read by
backend/fusion.py's Fusion, which lists them with the other fusions).

    RESHAPE_ALIAS   a reshape (or flatten) is its input's buffer under another shape: no copy, no buffer
    SLICE_THROUGH   permute(reshape(x[..., a:b])) (a transformer's head split) reads x in place, with
                    strides: one strided copy
    PLACE_SUM       unslices of disjoint windows summed (the head split's gradient): each writes its
                    window of the sum's buffer (zeroed once unless they cover them), and a permute
                    before one (through a reshape) writes straight into it
"""
from __future__ import annotations

from graphc.backend.sizes import contiguous_strides, dim_poly, pmul
from graphc.backend.matcher import match, op, var

RESHAPES = ("reshape", "flatten")     # relabel a contiguous buffer: RESHAPE_ALIAS
SLICE_THROUGH = (op("permute", op("reshape", op("slice", var("x"), bind="part"), bind="split"), bind="heads"),
                 op("permute", op("slice", var("x"), bind="part"), bind="heads"))
PLACE_SUM = ("add", "unslice")          # a tree of adds, each leaf an unslice
PLACE_FROM = (op("unslice", op("reshape", op("permute", var("d"), bind="heads"), bind="split"), bind="leaf"),
              op("unslice", op("permute", var("d"), bind="heads"), bind="leaf"))


def reshaped_strides(shape, strides, new_shape) -> list | None:
    """The strides of a strided view of `shape` read as `new_shape` (same elements, row-major) when
    the reshape only keeps axes, splits one or drops or adds axes of 1; None otherwise (merging axes
    of a view with gaps would need a copy)."""
    old = [(d, s) for d, s in zip(shape, strides) if d != 1]
    out, i = [], 0
    for d in new_shape:
        if d == 1:
            out.append(dim_poly(0))
            continue
        if i >= len(old):
            return None
        size, stride = old[i]
        if d == size:
            out.append(stride)
            i += 1
        elif isinstance(d, int) and isinstance(size, int) and size % d == 0:
            out.append(pmul(stride, size // d))       # the outer part of a split axis
            old[i] = (size // d, stride)
        else:
            return None
    return out if i == len(old) else None


def layout_views(f) -> None:
    """SLICE_THROUGH, PLACE_SUM and RESHAPE_ALIAS: layout ops that move no element get no
    kernel. A slice read only by a permute (through a reshape) is read in place by the permute,
    with strides; the unslices of one sum write their windows of its buffer, the permute before
    one writing its window itself; what remains of a reshape is its input's buffer."""
    for n in f.g.nodes:
        env = next((e for e in (match(p, n.output) for p in SLICE_THROUGH) if e is not None), None)
        if env is None or not f.has_buffer(env["x"]):
            continue
        part, split = env["part"], env.get("split")
        chain = [part] + ([split] if split is not None else [])
        if any(f.single_user(c) is None or c in f.static or c in f.absorbed for c in chain):
            continue
        x, a = env["x"], part.node.attrs
        strides = contiguous_strides(x.shape)
        ax = a["axis"] % x.rank
        offset = pmul(strides[ax], a["start"])
        strides[ax] = pmul(strides[ax], a["step"])
        if split is not None:
            strides = reshaped_strides(part.shape, strides, split.shape)
        if strides is not None:
            f.through[chain[-1]] = (x, tuple(strides), offset)
            f.absorbed.update(chain)
    for n, inner, leaves in f.sum_trees(*PLACE_SUM):
        a = [lf.attrs for lf in leaves]
        windows = sorted((b["start"], b["stop"]) for b in a)
        if len({(b["size"], b["axis"] % n.output.rank) for b in a}) != 1 or any(b["step"] != 1 for b in a) \
                or any(isinstance(w, str) for win in windows for w in win) \
                or any(w[1] > nxt[0] for w, nxt in zip(windows, windows[1:])):
            continue
        covered = windows[0][0] == 0 and windows[-1][1] == a[0]["size"] and \
            all(w[1] == nxt[0] for w, nxt in zip(windows, windows[1:]))
        total = contiguous_strides(n.output.shape)
        writers = []
        for lf in leaves:
            ax = lf.attrs["axis"] % n.output.rank
            offset = pmul(total[ax], lf.attrs["start"])
            env = next((e for e in (match(p, lf.output) for p in PLACE_FROM) if e is not None), None)
            heads, split = (env["heads"], env.get("split")) if env is not None else (None, None)
            chain = [heads] + ([split] if split is not None else []) if heads is not None else []
            strides = reshaped_strides(split.shape, total, heads.shape) if split is not None else total
            if heads is None or strides is None or heads.node in f.writes or any(
                    f.single_user(c) is None or c in f.static or c in f.absorbed for c in chain):
                writers.append((lf, lf, tuple(total), offset))
                continue
            writers.append((heads.node, lf, tuple(strides), offset))
            f.absorbed.update(chain[1:])
        first = min((w[0] for w in writers), key=lambda m: f.where[m])
        for writer, lf, strides, offset in writers:
            f.placed[writer] = (n.output, strides, offset, writer is first and not covered)
            f.absorbed.add(lf.output)
        f.absorbed.update(inner)
        f.absorbed.add(n.output)     # written by its leaves: the add itself has no kernel
    for n in f.g.nodes:
        v, x = n.output, n.inputs[0] if n.inputs else None
        if n.op.name in RESHAPES and v not in f.out_of and v not in f.keep and v not in f.static \
                and v not in f.absorbed and x.shape != () and f.has_buffer(x):
            f.alias[v] = f.alias.get(x, x)
