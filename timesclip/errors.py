"""Error types that the CLIs turn into one-line messages.

Anything a user can fix (bad file, bad flag, missing weights) raises a subclass of
`UserError`; the CLIs print `error: <message>` and exit with code 2. Anything else is a
bug or an environment failure and exits with code 1.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message is one line naming the problem and the fix."""


class ConfigError(UserError, ValueError):
    """An invalid hyperparameter value or an unknown parameter name."""


class DataError(UserError, ValueError):
    """A data file that cannot be used (missing, malformed, too short, ...)."""


class BackboneError(UserError, RuntimeError):
    """CLIP weights that cannot be found or loaded."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops instead of returning garbage."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"non-finite loss ({value}) at epoch {epoch}, step {step}: lower the learning rate "
            "or the contrastive weight, or raise the temperature"
        )

    def __reduce__(self):  # so Ray (and pickle/copy) can move the error between processes
        return (type(self), (self.epoch, self.step, self.value))
