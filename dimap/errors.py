"""User-facing errors: one sentence naming the fix, a non-zero exit, no traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake the user can fix; the message is one sentence naming the fix."""


def exit_on_user_error(fn):
    """Wrap an entry point so a UserError prints its sentence and exits with status 2.

    SystemExit is a BaseException, so it passes through Hydra's own exception reporting untouched.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def check_config_groups(conf_dir, argv: list[str]) -> None:
    """Refuse `group=value` command-line overrides naming no file in conf/group/ (e.g. `prune=foo`) in one
    sentence, exit status 2: Hydra's own message for that is 14 lines and exits 1. Called before Hydra starts;
    anything this does not recognise (keys with dots, +/~ prefixes, hydra/ groups) is left to Hydra."""
    from pathlib import Path
    conf_dir = Path(conf_dir)
    for arg in argv:
        group, sep, value = arg.partition("=")
        if not sep or "." in group or group.startswith(("+", "~", "-", "hydra")) or not (conf_dir / group).is_dir():
            continue
        for choice in value.split(","):  # -m sweeps: model=swin_t,swin_s
            if choice and choice != "null" and not (conf_dir / group / f"{choice}.yaml").is_file():
                options = sorted(str(p.relative_to(conf_dir / group).with_suffix(""))
                                 for p in (conf_dir / group).rglob("*.yaml"))
                shown = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
                print(f"error: {group}={choice} names no file conf/{group}/{choice}.yaml: choose one of {shown}",
                      file=sys.stderr, flush=True)
                sys.exit(2)
