"""Weights & Biases logging on rank 0: the resolved config and git commit, per-epoch metrics, and a summary with
a row in the paper's Table 1 format. Offline when wandb finds no credentials. Its files go under logger.dir,
else $WANDB_DIR, else output_dir (in a `wandb/` folder, as wandb names it).

Every method is a no-op when logging is off or on a rank other than 0, so callers never branch.
"""
import os

from dimap.errors import UserError

PAPER_VARIANTS = {0.15: "DIMAP1", 0.35: "DIMAP2", 0.55: "DIMAP3"}  # paper Table 1 names for the dimap ratios
TABLE1_COLUMNS = ["model", "variant", "method", "ratio", "top1", "top5", "params_m", "params_reduction_pct",
                  "flops_g", "flops_reduction_pct"]


def wandb_has_credentials() -> bool:
    """Whether wandb.init would find credentials, looked up the way wandb does: WANDB_API_KEY or an identity
    token file, then the netrc entry `wandb login` writes, then wandb's settings."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:  # wandb's own lookup (private API: if it moves, we fall back to offline, never to a failing run)
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth.authenticate import _use_system_auth
        from wandb.sdk.lib.wbauth.host_url import HostUrl
        host = HostUrl(wandb_setup.singleton().settings.base_url)
        return _use_system_auth(host=host, source="dimap", update_session=False) is not None
    except Exception:  # noqa: BLE001 (a malformed key or netrc: offline, and wandb.init says why if asked)
        return False


def wandb_mode(cfg_mode=None) -> str | None:
    """The mode to pass to wandb.init: the config's if set; else WANDB_MODE's (None lets wandb read it); else
    online when wandb finds credentials (WANDB_API_KEY, `wandb login`'s netrc entry), offline without."""
    if cfg_mode:
        return str(cfg_mode)
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if wandb_has_credentials() else "offline"


def wandb_dir(cfg_dir, default) -> str:
    """The folder wandb.init writes its `wandb/` under: an explicit `logger.dir`; else $WANDB_DIR when set, as
    wandb itself does; else `default` (a training run's output_dir)."""
    if cfg_dir:
        return str(cfg_dir)
    return os.environ.get("WANDB_DIR") or str(default)


def table1_row(summary: dict) -> dict:
    """One row as in the paper's Table 1 (params in millions, paper-style FLOPs in G, reductions in %)."""
    ratio = summary["ratio"]
    variant = PAPER_VARIANTS.get(round(ratio, 2), "") if summary["method"] == "dimap" else ""
    if summary["method"] == "none" and ratio == 0:  # an evaluation of dense weights (train.py at ratio 0)
        variant = "dense"
    return {"model": summary.get("model_short", summary["model"]), "variant": variant or summary["method"],
            "method": summary["method"], "ratio": ratio, "top1": summary.get("top1"), "top5": summary.get("top5"),
            "params_m": summary["params_nonzero"] / 1e6, "params_reduction_pct": summary["params_reduction_pct"],
            "flops_g": summary["flops_paper"] / 1e9, "flops_reduction_pct": summary["flops_paper_reduction_pct"]}


class WandbLogger:
    def __init__(self, cfg: dict | None, config: dict, out_dir, *, enabled: bool = True, run_id: str | None = None):
        """`cfg` is the logger config (enabled, project, entity, group, name, tags, mode); `config` the resolved
        run config, stored with the run; `run_id` continues an earlier run (resumed training)."""
        self.run = None
        cfg = cfg or {}
        if not enabled or not cfg.get("enabled", False):
            return
        import wandb

        folder = wandb_dir(cfg.get("dir"), out_dir)
        os.makedirs(folder, exist_ok=True)
        from dimap.provenance import git_commit
        try:
            self.run = wandb.init(
                project=cfg.get("project", "dimap"), entity=cfg.get("entity"), group=cfg.get("group"),
                name=cfg.get("name"), tags=list(cfg.get("tags") or []), dir=folder,
                mode=wandb_mode(cfg.get("mode")), config={**config, "git_commit": git_commit()}, id=run_id,
                resume="allow" if run_id else None)
        except Exception as e:  # wandb's own errors (no network, a wrong entity, a revoked key) are the user's to fix
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise UserError(f"wandb.init failed ({type(e).__name__}: {first}): check logger.project, logger.entity "
                            "and your wandb login, or pass logger.mode=offline or logger=none") from None

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, summary: dict | None = None) -> None:
        """Headline figures into the run summary and the Table 1 row as a wandb.Table, then close the run."""
        if self.run is None:
            return
        if summary is not None:
            import wandb

            keep = ("top1", "top5", "pruned_top1", "pruned_top5", "dense_top1", "dense_top5", "best_top1",
                    "params_total", "params_nonzero", "params_reduction_pct", "flops_dense", "flops_paper",
                    "flops_paper_reduction_pct", "flops_sparse", "flops_sparse_reduction_pct", "wall_time_s")
            self.run.summary.update({k: summary[k] for k in keep if summary.get(k) is not None})
            row = table1_row(summary)
            self.run.log({"table1": wandb.Table(columns=TABLE1_COLUMNS, data=[[row[c] for c in TABLE1_COLUMNS]])})
        self.run.finish()
        self.run = None
