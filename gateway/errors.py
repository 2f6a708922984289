"""Herald's exception tree, drawn once here; everything else refers to it.

::

    HeraldError                      (base; never raised itself)
    ├── Unauthenticated              -> UNAUTHENTICATED
    ├── PermissionDenied             -> PERMISSION_DENIED
    ├── InvalidArgument(field, rule) -> INVALID_ARGUMENT
    ├── AlreadyExists                -> ALREADY_EXISTS
    ├── NotFound                     -> NOT_FOUND
    ├── ResourceExhausted            -> RESOURCE_EXHAUSTED
    ├── FailedPrecondition           -> FAILED_PRECONDITION
    └── Unavailable                  -> UNAVAILABLE
        └── StoreUnavailable         (the state store did not answer)

    PolicyError(problems)            (policy files refused; not an API error)

``STATUS_OF`` is the only place that maps errors to gRPC status codes. Messages say
what is wrong and what to do next, and never carry personal data or secrets.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class HeraldError(Exception):
    """Base of every error that answers an API call."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(HeraldError):
    pass


class PermissionDenied(HeraldError):
    pass


class InvalidArgument(HeraldError):
    """A malformed field. The message is ``<field>: <rule>``."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class AlreadyExists(HeraldError):
    pass


class NotFound(HeraldError):
    pass


class ResourceExhausted(HeraldError):
    pass


class FailedPrecondition(HeraldError):
    pass


class Unavailable(HeraldError):
    pass


class StoreUnavailable(Unavailable):
    pass


STATUS_OF: dict[type[HeraldError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(error: HeraldError) -> grpc.StatusCode:
    """The gRPC status for an error: the entry of its nearest class in ``STATUS_OF``."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong in a policy set: ``file: path: problem``."""

    file: str
    path: str
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.problem}"


class PolicyError(Exception):
    """A policy set was refused; ``problems`` lists every fault found."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the policy files:\n{lines}")
