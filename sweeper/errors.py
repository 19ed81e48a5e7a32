"""The errors users can cause, each printed by the CLI as one line with no traceback."""


class SweeperError(Exception):
    """A problem with the user's input; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(SweeperError):
    """A config field holds a value outside what is allowed; the message names the field."""

    exit_code = 2


class DataError(SweeperError):
    """The dataset is missing, truncated or malformed; the message names the file and a fix."""


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (libraries often add many), or its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def from_mlflow(error: BaseException) -> bool:
    """Whether `error` is MLflow's own (a tracking store that stopped answering, say)."""
    return type(error).__module__.startswith("mlflow")
