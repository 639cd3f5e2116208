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
