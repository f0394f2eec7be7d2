"""Progress of long work (fit's epochs) on stderr: tqdm's bar when tqdm is installed (an optional
extra: pip install 'graphc[demo]' brings it), else a plain bar of its own.

In: the number of epochs, the rows of an epoch, and whether to show anything. Out: a `Progress`
whose `update(epoch, loss, seconds)` shows the epoch, the mean loss and the rows per second.
"""
from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, epochs: int, rows: int, stream: Any = None):
        self.epochs, self.rows = epochs, rows
        self.stream = sys.stderr if stream is None else stream
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=epochs, unit="epoch", file=self.stream, dynamic_ncols=True, leave=True)

    def update(self, epoch: int, loss: float, seconds: float) -> None:
        rate = self.rows / seconds if seconds > 0 else float("inf")
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.0f} rows/s", refresh=False)
            self.bar.update(1)
            return
        width = 30
        done = int(width * epoch / max(self.epochs, 1))
        self.stream.write(f"\repoch {epoch:>{len(str(self.epochs))}}/{self.epochs} "
                          f"[{'=' * done}{' ' * (width - done)}] loss {loss:.4f}  {rate:,.0f} rows/s")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.epochs:
            self.stream.write("\n")
            self.stream.flush()


def wanted(progress: Any, stream: Any = None) -> bool:
    """progress=None: on when the stream is a terminal; True: on; False or a callable: off."""
    if progress is None:
        stream = sys.stderr if stream is None else stream
        return bool(getattr(stream, "isatty", lambda: False)())
    return progress is True
