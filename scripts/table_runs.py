"""Which run fills a cell of the paper's tables: the row's own run, never another's (used by make_tables.py).

A row is an experiment file (conf/experiment/tableN/ROW.yaml): its recipe is that file composed with train.yaml.
A run (a summary.json under results/runs) gives a row its ACCURACY only if it is that row's run:
- not an inspection run (prune.py prune=none) and not weights that were already pruned when it started;
- the recipe's architecture (model name, kwargs, resolution) with weights that are not random;
- the recipe's pruning (method, ratio, no module_ratios), the recipe's epochs and no dense pretraining;
- the recipe's evaluation data (data set, resolution, crop, interpolation, normalisation) and, when it trains,
  the recipe's whole training setup (every train.* and data.aug.* value and drop path, except those that only
  decide how the work is spread over the hardware: batch per process, accumulation, AMP, workers...).
The row's own folder gets no exemption: a smoke run written there is refused like any other. Of the qualifying
runs the newest wins. A run may give a row its COUNTS (params and FLOPs, which do not depend on the weights)
if it has the row's architecture and pruning, e.g. a prune-only run of prune.py on random weights; sparse FLOPs
do depend on the weights and are taken only from a run on pretrained weights. Every refused candidate (a run
of the row's model that is in the row's folder or was configured with the row's method and ratio) is named
with its reason.
"""
import functools
import json
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARDWARE_KEYS = {"batch_size", "global_batch", "accum_steps", "eval_batch_size", "num_workers", "pin_memory", "amp",
                 "compile", "channels_last", "resume", "validate_dense", "nonfinite"}
EVAL_DATA_KEYS = ("name", "img_size", "crop_pct", "interpolation", "mean", "std")


def load_runs(runs_dir: Path) -> list[dict]:
    """Every summary.json under runs_dir that names a model, with its folder and finishing time."""
    runs = []
    for path in sorted(runs_dir.rglob("summary.json")):
        try:
            s = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "model_short" not in s:
            continue
        config = s.get("config") or {}
        epochs = s.get("epochs", (config.get("train") or {}).get("epochs"))
        finished = s.get("finished_at")  # file times do not survive a git checkout; this does
        time = datetime.fromisoformat(finished).timestamp() if finished else path.stat().st_mtime
        runs.append({**s, "epochs": epochs, "config": config, "time": time,
                     "folder": path.parent.relative_to(runs_dir).as_posix()})
    return runs


@functools.lru_cache(maxsize=None)
def recipe(experiment: str) -> dict:
    """conf/experiment/EXPERIMENT.yaml composed with train.yaml, resolved (data.root left unset)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf import OmegaConf
    backup = get_gh_backup()  # called from a running Hydra app (the multirun's tables callback): set it aside
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}"])
    finally:
        restore_gh_from_backup(backup)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@functools.lru_cache(maxsize=None)
def row_of(experiment: str) -> dict:
    """Model short name, method and ratio straight from the experiment file (no composition: cheap)."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(ROOT / "conf" / "experiment" / f"{experiment}.yaml")
    groups = {k.removeprefix("override ").lstrip("/"): v for d in cfg.defaults if not isinstance(d, str)
              for k, v in d.items()}
    return {"model": groups["model"], "method": groups["prune"], "ratio": float(cfg.prune.ratio)}


# prune.* keys added after runs were recorded, with the value every run before them had: such a run's missing key
# reads as that value (a run without prune.pattern was unstructured), so committed runs keep filling their cells
ADDED_PRUNE_KEYS = {"pattern": "unstructured", "nm_allocation": "auto", "semi_structured": False}


def _differ(run: dict, want: dict, keys) -> list[str]:
    return [k for k in keys if run.get(k) != want.get(k)]


def _same_ratio(a, b) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) < 1e-6


def architecture_refusal(run: dict, want: dict) -> str | None:
    """Why `run` does not have the recipe's model and pruning (None if it does): what the counts depend on."""
    if run.get("inspect") or (run.get("pruning") or {}).get("weights_already_pruned"):
        return "an inspection of an already pruned file"
    model = run["config"].get("model") or {}
    if diff := _differ(model, want["model"], ("name", "kwargs", "img_size", "in_chans")):
        return f"another architecture (model.{', model.'.join(diff)})"
    prune = run["config"].get("prune") or {}
    if prune.get("method") != want["prune"]["method"] or not _same_ratio(prune.get("ratio"), want["prune"]["ratio"]):
        return f"pruned by {prune.get('method')} at r={prune.get('ratio')}"
    if prune.get("module_ratios"):
        return "pruned with prune.module_ratios"
    # the data-aware methods' own settings (calibration images, SparseGPT's blocksize and dampening) shape the masks
    if diff := [k for k in sorted(set(want["prune"]) - {"method", "ratio", "module_ratios"})
                if prune.get(k, ADDED_PRUNE_KEYS.get(k)) != want["prune"][k]]:
        return f"other pruning settings (prune.{', prune.'.join(diff)})"
    if want["prune"]["ratio"] == 0 and "pruning" not in run and run.get("top1") is not None:
        return "recorded before evaluation runs said what they evaluated (a pruned file read as dense?): rerun it"
    return None


def accuracy_refusal(run: dict, want: dict) -> str | None:
    """Why `run` cannot give the row its accuracy (None if it is the row's run)."""
    if reason := architecture_refusal(run, want):
        return reason
    if run.get("top1") is None:
        return "no accuracy (prune only)"
    if run.get("weights") == "random":
        return "random weights"
    if run.get("epochs") != want["train"]["epochs"]:
        return f"{run.get('epochs')} epochs, the recipe has {want['train']['epochs']}"
    config = run["config"]
    if (config.get("pretrain") or {}).get("epochs"):
        return "dense pretraining before pruning"
    if diff := _differ(config.get("data") or {}, want["data"], EVAL_DATA_KEYS):
        return f"other evaluation data (data.{', data.'.join(diff)})"
    if want["train"]["epochs"]:
        train = [f"train.{k}" for k in _differ(config.get("train") or {}, want["train"],
                                                sorted(set(want["train"]) - HARDWARE_KEYS))]
        aug = [f"data.aug.{k}" for k in _differ((config.get("data") or {}).get("aug") or {}, want["data"]["aug"],
                                                 sorted(want["data"]["aug"]))]
        path = _differ(config.get("model") or {}, want["model"], ("drop_path_rate",))
        if train + aug + path:
            return f"another training recipe ({', '.join(train + aug + ['model.' + p for p in path])})"
    return None


def _candidate(run: dict, row: dict, folder: str) -> bool:
    """Runs worth a look (and a refusal note): this model, in the row's folder or configured with its pruning."""
    prune = run["config"].get("prune") or {}
    return run["model_short"] == row["model"] and (
        run["folder"] in (folder, f"prune_only/{folder}") or (
            prune.get("method") == row["method"] and _same_ratio(prune.get("ratio"), row["ratio"])))


def find_run(runs: list[dict], experiment: str) -> tuple[dict | None, dict | None, list[str]]:
    """(run with the row's accuracy, run with its counts, refusal notes) for the row `experiment`."""
    candidates = [r for r in runs if _candidate(r, row_of(experiment), experiment)]
    if not candidates:
        return None, None, []
    want = recipe(experiment)  # composed only for rows that have candidates (a Hydra compose costs ~0.25 s)
    acc = max((r for r in candidates if accuracy_refusal(r, want) is None), key=lambda r: r["time"], default=None)
    counts = acc or max((r for r in candidates if architecture_refusal(r, want) is None),
                        key=lambda r: (r.get("weights") != "random", r["time"]), default=None)
    refused = [f"refused `{r['folder']}`: {accuracy_refusal(r, want)}" for r in candidates  # the counts' run too,
               if r is not acc and (r is not counts or r.get("top1") is not None)]  # when it measured accuracy
    return acc, counts, refused
