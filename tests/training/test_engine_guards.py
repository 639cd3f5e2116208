"""Guards the engine tests above do not reach: the clipping norm of the pruned network, the per-image
evaluation loss, and a checkpoint write that dies half-way."""
import copy

import pytest
import torch
from conftest import make_tiny_swin
from torch.utils.data import DataLoader, TensorDataset

from dimap.pruning.masks import FixedMask, apply_masks, compute_masks
from dimap.training import checkpoint
from dimap.training.engine import evaluate, train_one_epoch

CPU = torch.device("cpu")


def data(n=8, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=batch, shuffle=False)


def pruned_tiny_swin():
    model = make_tiny_swin(drop_path_rate=0.0)  # deterministic forward: the manual loop must see the same losses
    masks = compute_masks(model, "dimap", 0.55)
    apply_masks(model, masks)
    return model, masks


def test_gradients_are_masked_before_clipping_so_pruned_moments_stay_zero():
    model, masks = pruned_tiny_swin()
    manual = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    train_one_epoch(model, loss_fn, data(), opt, CPU, 0, clip_grad=0.05, fixed_mask=FixedMask(model, masks),
                    progress=False)
    params = dict(model.named_parameters())
    for name, mask in masks.items():  # a gradient that reached AdamW would leave a non-zero moment here
        state = opt.state[params[name]]
        assert torch.all(state["exp_avg"][~mask] == 0) and torch.all(state["exp_avg_sq"][~mask] == 0), name

    # the same steps by hand: mask the gradients, clip by the pruned network's norm, step, re-mask
    opt_m, fixed_m = torch.optim.AdamW(manual.parameters(), lr=1e-3, weight_decay=0.05), FixedMask(manual, masks)
    for x, y in data():
        loss_fn(manual(x), y).backward()
        fixed_m.mask_grads()
        torch.nn.utils.clip_grad_norm_(manual.parameters(), 0.05)
        opt_m.step()
        opt_m.zero_grad(set_to_none=True)
        fixed_m.apply()
    for (name, a), b in zip(model.named_parameters(), manual.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


class Fixed(torch.nn.Module):
    """Logits read straight from the input, so the expected loss is computable by hand."""

    def forward(self, x):
        return x


def test_evaluation_loss_is_the_mean_over_images_not_over_batches():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(5, 10, generator=g) * 3, torch.tensor([0, 3, 3, 9, 1])
    ev = evaluate(Fixed(), DataLoader(TensorDataset(logits, y), batch_size=2), CPU, progress=False)  # 2 + 2 + 1
    expected = torch.nn.functional.cross_entropy(logits.double(), y).item()
    per_batch = sum(torch.nn.functional.cross_entropy(logits[i:i + 2], y[i:i + 2]).item() for i in (0, 2, 4)) / 3
    assert ev["loss"] == pytest.approx(expected, rel=1e-6) and abs(expected - per_batch) > 1e-3
    assert ev["top1"] == pytest.approx(100 * (logits.argmax(1) == y).double().mean().item()) and ev["n"] == 5


def test_a_checkpoint_write_dying_half_way_leaves_the_previous_last_pt_readable(tmp_path, monkeypatch):
    checkpoint.save_checkpoint({"model": {"w": torch.zeros(2)}, "masks": {}, "epoch": 0}, tmp_path)
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(50)  # a torn file on disk, then the process dies
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint({"model": {"w": torch.ones(2)}, "masks": {}, "epoch": 1}, tmp_path, is_best=True)
    monkeypatch.undo()
    assert checkpoint.read_checkpoint(tmp_path / "last.pt")["epoch"] == 0  # last.pt itself, not the prev.pt fallback
    assert not (tmp_path / "best.pt").exists()
