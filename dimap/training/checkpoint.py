"""Training checkpoints: one dict per file (DeiT), written atomically and rotated, so that a run killed at any
moment, or a last.pt that was torn or corrupted, resumes from the previous good checkpoint.

    output_dir/checkpoints/last.pt   after every epoch (the previous one is renamed to prev.pt first)
    output_dir/checkpoints/prev.pt   the fallback
    output_dir/checkpoints/best.pt   best top-1 so far (a hard link to that epoch's file where possible)

Everything is stored as tensors and plain Python values, so the files load with `weights_only=True`.
"""
import os
import random
from pathlib import Path

import numpy as np
import torch

from dimap.errors import UserError

LAST, PREV, BEST = "last.pt", "prev.pt", "best.pt"


def rng_state() -> dict:
    """This process's random number generators: torch (CPU and CUDA), numpy and Python's `random`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def restore_rng_state(states: list[dict], rank: int, world_size: int, seed: int, epoch: int) -> bool:
    """Continue this rank's random streams from a checkpoint's per-rank `states` (in rank order).

    Same world size: each rank takes its own saved state, so a resumed run equals an uninterrupted one. Another
    world size: the saved streams do not map onto the ranks, so every rank is reseeded from (seed, epoch, rank),
    still one distinct stream per rank. Returns whether the saved states were restored exactly.
    """
    if len(states) == world_size:
        set_rng_state(states[rank])
        return True
    seed_everything(int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]), rank)
    return False


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch, numpy and Python per rank (augmentation and drop path differ across ranks, as they should)."""
    s = int(seed) + int(rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(state: dict, ckpt_dir: str | Path, is_best: bool = False) -> Path:
    """Write `state` as last.pt: to a temporary file first, then last.pt -> prev.pt, then tmp -> last.pt."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last, tmp = ckpt_dir / LAST, ckpt_dir / (LAST + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if last.exists():
        os.replace(last, ckpt_dir / PREV)
    os.replace(tmp, last)
    if is_best:
        best_tmp = ckpt_dir / (BEST + ".tmp")
        best_tmp.unlink(missing_ok=True)
        try:
            os.link(last, best_tmp)  # files are only ever renamed, never rewritten, so sharing the inode is safe
            os.replace(best_tmp, ckpt_dir / BEST)
        except OSError:
            _atomic_save(state, ckpt_dir / BEST)
    return last


def read_checkpoint(path: str | Path) -> dict:
    """One checkpoint file; a torn or foreign file raises UserError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, a pickle with code in it
        raise UserError(f"{path} is unreadable ({type(e).__name__}): delete it or pass train.resume=false") from None
    if not isinstance(state, dict) or not {"model", "masks", "epoch"} <= set(state):
        raise UserError(f"{path} is not a dimap training checkpoint: delete it or pass train.resume=false")
    return state


def load_latest(ckpt_dir: str | Path, log=print) -> tuple[dict | None, Path | None]:
    """(state, path) of the newest readable checkpoint in `ckpt_dir`: last.pt, else prev.pt; (None, None) if
    there is none. A corrupt last.pt is reported in one sentence and skipped."""
    ckpt_dir = Path(ckpt_dir)
    candidates = [p for p in (ckpt_dir / LAST, ckpt_dir / PREV) if p.is_file()]
    errors = []
    for path in candidates:
        try:
            return read_checkpoint(path), path
        except UserError as e:
            errors.append(str(e))
            log(f"warning: {path} is unreadable, falling back to the previous checkpoint")
    if errors:
        raise UserError(f"no readable checkpoint in {ckpt_dir} ({errors[-1]})")
    return None, None


# Settings that may change between a run and its resumption without changing what is being trained.
RESUME_FREE = {"output_dir", "logger", "paths", "hydra", "device"}
RESUME_FREE_TRAIN = {"resume", "num_workers", "pin_memory", "eval_batch_size", "validate_dense", "nonfinite",
                     "max_skipped_steps", "eval_amp", "checkpoint_every_steps", "log_interval"}
RESUME_FREE_DATA = {"root", "num_workers", "max_bad_images"}


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ in a way that makes resuming `old` under `new` wrong."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_FREE:
            continue
        a, b = old.get(key), new.get(key)
        free = RESUME_FREE_TRAIN if key == "train" else RESUME_FREE_DATA if key == "data" else set()
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if k not in free and a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(key)
    return diffs


def check_resumable(state: dict | None, config: dict, global_batch: int, out: Path) -> None:
    """Refuse, in one sentence, a checkpoint that this run must not continue: another config, or another global
    batch (its schedule was laid out for that batch's updates per epoch)."""
    if state is None:
        return
    if diffs := config_differences(state["config"], config):
        raise UserError(f"{out}/checkpoints hold a run of a different config (differs in {', '.join(diffs)}): "
                        "choose another output_dir or pass train.resume=false to start over")
    if state.get("global_batch", global_batch) != global_batch:
        raise UserError(f"{out}/checkpoints hold a run of global batch {state['global_batch']} on "
                        f"{state['world_size']} process(es), here it would be {global_batch}: resume on "
                        f"{state['world_size']} process(es) (a train.global_batch run may change its GPU count), or "
                        "pass train.resume=false")
