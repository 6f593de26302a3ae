"""One base error; each subclass carries the documented exit code.

At the CLI boundary a K3srotdError is one line and its exit code; anything else is "unexpected".
"""

from __future__ import annotations


class K3srotdError(Exception):
    """A known failure: its message is one line that names the path or key and what to do."""

    exit_code = 1


class StepFailed(K3srotdError):
    """The operation failed; the live keys are as they were before it (or restored)."""

    exit_code = 1


class ConfigError(K3srotdError):
    """Usage, configuration or input error."""

    exit_code = 2


class SafetyRefusal(K3srotdError):
    """A safety check refused the operation (grace not passed, not a K3s server, unparsable key file...)."""

    exit_code = 3


class LockHeld(K3srotdError):
    """Another k3srotd holds the lock."""

    exit_code = 4


class NoSpace(StepFailed):
    """A file k3srotd keeps could not be written: its filesystem is full (or out of quota, or read-only). What
    the file was stays as it was (writes are atomic); a step under way rolls back."""

    exit_code = 1


class RollbackFailed(StepFailed):
    """The step failed and putting the old keys back failed too: a human must act."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM to a manual command: no step was under way, or the one under way has ended (done, or rolled back).
    A BaseException, as KeyboardInterrupt is: raised from the signal handler at any point, it must not be taken
    for a failed API call or fetch by the code it interrupts (`except K3srotdError` would keep a wait going).
    Not exit 1: that says the keys are as they were, and a step that ended before the stop may have changed them.
    143 is what a shell reports for a process ended by SIGTERM (128 + 15)."""

    exit_code = 143
