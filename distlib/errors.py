"""Exceptions with messages meant for the person running the experiment."""


class ConfigError(ValueError):
    """A config value is wrong. The message names the field and what is allowed."""


class DeadlockError(RuntimeError):
    """A communication pattern can never complete; the message names workers and calls."""


class CommError(RuntimeError):
    """A communication call failed or timed out (torch.distributed backend)."""


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite."""
