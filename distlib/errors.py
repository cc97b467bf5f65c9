"""Exceptions with messages meant for the person running the experiment."""


class ConfigError(ValueError):
    """A config value is wrong. The message names the field and what is allowed."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be resumed from: unreadable, unsafe to unpickle, incomplete, or made
    with an incompatible config. The message names the file and the reason."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a lost mount); the previous one is kept. The
    message names the file and the reason."""


class DeadlockError(RuntimeError):
    """A communication pattern can never complete; the message names workers and calls."""


class CommError(RuntimeError):
    """A communication call failed or timed out (torch.distributed backend)."""


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite."""
