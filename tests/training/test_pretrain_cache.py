"""The dense-pretraining cache as several ranks meet it: they must all load it or all train."""
import pytest
import torch

from dimap.errors import UserError
from dimap.training import pretrain


def config(tmp_path):
    return {"model": {"short": "nano"}, "data": {"name": "mnist5k"}, "seed": 0,
            "train": {"epochs": 1}, "pretrain": {"epochs": 1}, "paths": {"cache_dir": str(tmp_path)}}


def test_a_cache_some_ranks_find_and_others_do_not_is_refused_before_anyone_trains(tmp_path, monkeypatch):
    """E.g. paths.cache_dir on node-local disks of a multi-node run: the ranks that load would skip pretraining's
    collectives that the others wait in. Before: node 0 loaded, node 1 trained, and the run hung."""
    model = torch.nn.Linear(2, 2)
    cfg = config(tmp_path)
    path = tmp_path / "pretrain" / f"nano_{pretrain.pretrain_key(cfg, 1)}.pt"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "top1": 50.0, "top5": 90.0}, path)
    trained = []
    monkeypatch.setattr(pretrain, "build_loaders", lambda *a, **k: trained.append(1) or pytest.fail("trained"))
    monkeypatch.setattr(pretrain, "all_gather_object", lambda hit: [hit, not hit])  # the other node: no file
    with pytest.raises(UserError, match="found on some ranks only: put paths.cache_dir on a filesystem all"):
        pretrain.pretrain_dense(model, cfg, torch.device("cpu"), tmp_path, log=lambda *a: None)
    monkeypatch.setattr(pretrain, "all_gather_object", lambda hit: [hit, hit])  # a shared cache: loaded
    assert pretrain.pretrain_dense(model, cfg, torch.device("cpu"), tmp_path, log=lambda *a: None)["cached"]
    assert trained == []
