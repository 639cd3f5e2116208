"""Training progress as a user sees it: tqdm's bar on a terminal; where stderr is not one (a Slurm task's .err
file, a redirect) a plain line every `log_interval` steps instead, as timm's train.py logs, since a bar's carriage
return redraws would fill such a file with thousands of partial lines.

    train 3 [  200/1251]  loss 3.2117  lr 3.91e-05  2873 images/s  ETA 0:06:05

The loss shown is read one step late (dimap.training.engine.Late), so showing it never stalls the GPU.
"""
import datetime
import sys
import time

from tqdm import tqdm

BAR_EVERY = 20  # the bar's postfix changes every this many steps: reading a loss is not free


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """One epoch's progress over steps [initial, total) of `desc`; shown only when `enabled` (rank 0). The rate
    counts the images of all `world_size` ranks."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, log_interval: int = 50,
                 world_size: int = 1):
        terminal = on_terminal()
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False,
                        disable=not (enabled and terminal))
        self.interval = int(log_interval or 0) if enabled and not terminal else 0
        self.every = BAR_EVERY if enabled and terminal else self.interval
        self.total, self.desc, self.world = total, desc, world_size
        self.t0, self.noted, self.images, self.done = time.perf_counter(), None, 0, 0

    def wants(self, i: int) -> bool:
        """Whether the caller should note values at step `i` (0-based), to be shown at the next one."""
        return bool(self.every) and ((i + 1) % self.every == 0 or i + 1 == self.total)

    def note(self, i: int, loss, lr: float) -> None:
        """`loss` (a Late) and `lr` of step `i`; shown at the next update() or at close()."""
        if self.noted is not None:  # the step before's, noted too (a short interval, or the epoch's last step)
            self._show()
        self.noted = (i, loss, lr)

    def update(self, i: int, images: int) -> None:
        """Step `i`, of `images` images on this rank, is done."""
        self.images, self.done = self.images + images, self.done + 1
        if self.noted is not None and self.noted[0] < i:
            self._show()
        self.bar.update(1)

    def close(self) -> None:
        if self.noted is not None:
            self._show()
        self.bar.close()

    def _show(self) -> None:
        i, late, lr = self.noted
        self.noted = None
        loss = late.get()[0]
        if self.bar.disable:
            elapsed = time.perf_counter() - self.t0
            eta = datetime.timedelta(seconds=round(elapsed / max(self.done, 1) * (self.total - i - 1)))
            width = len(str(self.total))
            print(f"{self.desc} [{i + 1:>{width}}/{self.total}]  loss {loss:.4f}  lr {lr:.2e}  "
                  f"{self.images * self.world / max(elapsed, 1e-9):.0f} images/s  ETA {eta}", flush=True)
        else:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
