"""Log the paper's tables, ours beside the paper's, as wandb.Tables in one run (make_tables.py --wandb)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def logger_config(overrides: list[str]) -> dict:
    """The logger section of conf/tables.yaml with key=value overrides (e.g. logger.project=x)."""
    from omegaconf import OmegaConf
    from dimap.errors import UserError
    cfg = OmegaConf.load(ROOT / "conf" / "tables.yaml")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as e:
        raise UserError(f"cannot apply {overrides} to conf/tables.yaml ({e}): pass key=value pairs such as "
                        "logger.project=dimap") from None
    return OmegaConf.to_container(cfg.logger, resolve=True)


def tables_dir(cfg: dict) -> Path:
    """Where the tables run writes its `wandb/`: logger.dir (relative to the repository root), else $WANDB_DIR
    (as wandb reads it, from the working directory), else outputs/tables in the clone."""
    from dimap.training.wandb_logger import wandb_dir
    out = Path(wandb_dir(cfg.get("dir"), ROOT / "outputs" / "tables"))
    return ROOT / out if cfg.get("dir") and not out.is_absolute() else out


def log_tables(tables: dict, overrides: list[str], n_runs: int) -> str:
    """One wandb run (job_type "tables") holding every table; returns its local folder. Offline without a key."""
    import wandb
    from dimap.provenance import git_commit
    from dimap.training.wandb_logger import wandb_mode
    cfg = logger_config(overrides)
    out = tables_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg["project"], entity=cfg.get("entity"), group=cfg.get("group"), name=cfg.get("name"),
                     tags=list(cfg.get("tags") or []), job_type="tables", dir=str(out), mode=wandb_mode(cfg.get("mode")),
                     config={"git_commit": git_commit(), "runs_read": n_runs})
    for name, (title, headers, rows, notes) in tables.items():
        run.log({name: wandb.Table(columns=headers, data=rows)})
        sources = notes[-1][1] if isinstance(notes[-1], tuple) else []
        run.summary[f"{name}_title"] = title
        run.summary[f"{name}_notes"] = "\n".join([n for n in notes if isinstance(n, str)] + sources)
    folder = run.dir
    run.finish()
    return str(Path(folder).parent)
