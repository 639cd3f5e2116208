"""Unreadable images past data.max_bad_images on ONE rank of a multi-process run (its node's copy of the dataset is
damaged): every rank stops at the same update with the same one sentence and exit status 2, none is left waiting
in a collective for the process group's timeout, and the last checkpoint written stays the one to resume from.

The two ranks are started as Hydra's submitit launcher starts them (one task each, no torchrun whose agent would
end the others), in a process group whose timeout is short, so that a rank left behind fails this test in seconds
instead of holding CI for 30 minutes."""
import contextlib
import datetime
import io
import multiprocessing
import os
import socket
import time

import numpy as np
import pytest
import torch

LIMIT, BATCH, STEPS = 1, 4, 4  # data.max_bad_images, images per rank and step, steps per epoch (32 images / 2 ranks)
TIMEOUT_S = 20  # the process group's; a rank stopped at the same update waits for none


def image_folder(root, per_class=16):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def truncate(paths) -> list:
    paths = list(paths)
    for path in paths:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    return paths


def damage_in_epoch_1(root, rank: int = 1, world: int = 2, within: int = STEPS) -> tuple[list, int]:
    """Truncate LIMIT + 1 train images that `rank` reads in its first `within` steps of epoch 1 and in no step of
    epoch 0, so that epoch 0 and its checkpoint complete and that rank alone passes the limit in epoch 1, before
    its end (the samplers as train.py builds them). Returns their paths and the step of epoch 1 whose batch passes
    the limit (without loader workers: a bad file is replaced by the next readable one, met on the way too)."""
    from torchvision.datasets import ImageFolder
    from dimap.training.data import ResumableSampler
    samples = ImageFolder(root / "train").samples

    def read(epoch):
        sampler = ResumableSampler(samples, num_replicas=world, rank=rank, seed=0, generator=torch.Generator(),
                                   shuffle=True, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)[:STEPS * BATCH]

    bad = [i for i in read(1)[:within * BATCH] if i not in read(0)][:LIMIT + 1]
    assert len(bad) == LIMIT + 1
    seen = set()
    for position, i in enumerate(read(1)):
        while i in bad:
            seen.add(i)
            i = (i + 1) % len(samples)
        if len(seen) > LIMIT:
            return truncate(samples[i][0] for i in bad), position // BATCH + 1


def damage_val_of_rank_1(root) -> list:
    """Truncate the validation images of rank 1's shard (ShardedEvalSampler: every second one), read by the
    evaluation of the pruned model, before finetuning."""
    from torchvision.datasets import ImageFolder
    return truncate([path for path, _ in ImageFolder(root / "val").samples[1::2]][:LIMIT + 1])


def overrides(root):
    # no RandAugment: with Pillow 13 its PosterizeIncreasing at magnitude 10 raises (0 bits), unrelated to this test
    return ["data=imagenet", f"data.root={root}", "data.img_size=32", "data.crop_pct=1.0", "data.aug.auto_augment=null",
            "data.num_workers=0", f"data.max_bad_images={LIMIT}", "model.in_chans=3", "model.kwargs.in_chans=3",
            "model.kwargs.num_classes=2", f"train.batch_size={BATCH}", "train.eval_batch_size=4",
            f"train.max_steps_per_epoch={STEPS}", "train.epochs=3"]


def _rank(rank, world, init_file, out, roots, extra, results):
    import torch.distributed as dist
    import train
    from dimap.training import finetune
    from tests.test_failures import compose_train
    torch.set_num_threads(1)
    multiprocessing.set_start_method("fork", force=True)  # loader workers as in a task Slurm starts (not spawn's)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    os.environ.pop("TORCHELASTIC_RUN_ID", None)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))  # init_distributed keeps this group
    epochs, one_epoch = [], finetune.train_one_epoch

    def spied(*args, **kwargs):  # records where each epoch ended: the step it stopped at, or None
        stats = one_epoch(*args, **kwargs)
        epochs.append(stats.get("stopped_at"))
        return stats

    finetune.train_one_epoch = spied
    err, start = io.StringIO(), time.monotonic()
    try:
        with contextlib.redirect_stderr(err):
            train.run(compose_train(out, *overrides(roots[rank]), *extra))
        code = 0
    except SystemExit as e:
        code = e.code
    except Exception as e:  # what a real run would end with in a traceback
        code = f"{type(e).__name__}: {e}"
    results[rank] = (code, err.getvalue(), epochs, time.monotonic() - start, time.time())
    # Leave the group only once the other rank has ended (or timed out): a peer that exits is seen at once by gloo
    # ("Connection closed by peer"), not by NCCL, whose ranks wait for a stopped one until the timeout.
    deadline = time.monotonic() + TIMEOUT_S + 10
    while len(results) < world and time.monotonic() < deadline:
        time.sleep(0.05)
    dist.destroy_process_group()


# train: rank 1 passes the limit in its first 2 steps of epoch 1 (no loader worker: exactly at the step computed);
# with a checkpoint every step, that step's agreement is awaited before its checkpoint; val: at the evaluation of
# the pruned model, through a loader worker (its count in shared memory)
@pytest.mark.parametrize("case", ["train", pytest.param("train, checkpoint every step", marks=pytest.mark.slow),
                                  pytest.param("val", marks=pytest.mark.slow)])
def test_past_max_bad_images_on_one_rank_every_rank_stops_together_in_one_sentence(tmp_path, case):
    import torch.multiprocessing as mp
    clean = image_folder(tmp_path / "node0")
    damaged = image_folder(tmp_path / "node1")
    split, every = case.split(",")[0], int("checkpoint" in case)
    bad, passed_at = damage_in_epoch_1(damaged, within=2) if split == "train" else (damage_val_of_rank_1(damaged), 0)
    extra = ["data.num_workers=1"] if split == "val" else [f"train.checkpoint_every_steps={every}"]
    out = tmp_path / "run"
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(2, tmp_path / "init", out, {0: clean, 1: damaged}, extra, results), nprocs=2)

    sentences = {}
    for rank in (0, 1):
        code, err = results[rank][:2]
        assert code == 2 and "Traceback" not in err, (rank, code, err[-2000:], [results[r][2:] for r in (0, 1)])
        sentences[rank] = err.strip().splitlines()[-1]  # after the progress bars rank 0 draws
    assert sentences[0] == sentences[1]
    assert sentences[1].startswith(f"error: {LIMIT + 1} images under {damaged / split} on {socket.gethostname()} "
                                   "(rank 1) could not be read")
    assert any(f"more than data.max_bad_images={LIMIT} (the last: {path}): repair or remove them" in sentences[1]
               for path in bad)
    assert sentences[1].endswith("raise data.max_bad_images and rerun to resume")
    assert abs(results[0][4] - results[1][4]) < TIMEOUT_S / 2  # together, not one rank at the timeout
    assert not (out / "summary.json").exists() and not (out / ".lock").exists()
    if split == "train":  # at the same update of epoch 1, before its end; no checkpoint of any update since
        epochs = results[1][2]  # each epoch's stop step (None: ran to its end)
        stopped_at = passed_at if every else passed_at + 1  # the poll's agreement comes one update late
        assert results[0][2] == epochs == [None, stopped_at], (passed_at, [results[r][2] for r in (0, 1)])
        state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
        assert (state["epoch"], state.get("step") or 0) == (0, every * (passed_at - 1))  # the one to resume from
        assert len((out / "log.jsonl").read_text().splitlines()) == 1
    else:  # stopped at the evaluation of the pruned model: nothing written
        assert not (out / "checkpoints").exists()


def test_past_max_bad_images_in_a_single_process_run_it_stops_in_one_sentence(tmp_path, capsys):
    """No process group: the same sentence (without a rank), exit 2, the last checkpoint kept."""
    import train
    from tests.test_failures import compose_train
    root = image_folder(tmp_path / "data")
    bad = damage_in_epoch_1(root, rank=0, world=1)[0]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:  # no loader worker: it would prefetch batches of epoch 0 left unused
        train.run(compose_train(out, *overrides(root)))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {LIMIT + 1} images under {root / 'train'} could not be read, "
                                           f"more than data.max_bad_images={LIMIT} (the last: ")
    assert any(f"(the last: {path})" in err for path in bad)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 0
    assert not (out / "summary.json").exists()
