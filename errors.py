"""What the user is told when something is theirs to fix: the UserError base of every such error,
and warnings that carry a code.

This module imports nothing, so every part of the project can build on it without an import
cycle -- layers/ included, whose only import from outside itself it is.
"""


class UserError(Exception):
    """A mistake the user can fix: a config key, a flag, a checkpoint, a data file, an output
    directory, a launch, a training run that diverged. Its message is one line naming what is
    wrong; the command lines (training.cli.run_cli) print it without a traceback and exit with
    ``exit_status``."""
    exit_status = 2
    # True when every rank raises it at the same point (an agreed error): the ranks can then
    # meet at a barrier before they tear the process group down, as a run that ends well does.
    on_every_rank = False


class CodedWarning(str):
    """A warning's text with a stable ``code``. Callers filter warnings, and tests find them, by
    the code, so the wording can change freely. It stays a ``str`` so that the warnings lists of
    config.resolve (plain strings until now, and still plain strings where no caller needs to
    single one out) print, join and go into JSON as before."""

    def __new__(cls, code, text):
        warning = super().__new__(cls, text)
        warning.code = code
        return warning

    def __reduce__(self):  # copy, deepcopy and pickle rebuild it with its code
        return type(self), (self.code, str(self))


def without_warning(warnings, code):
    """``warnings`` less those with ``code`` (plain strings have no code and are kept)."""
    return [warning for warning in warnings if getattr(warning, 'code', None) != code]
