"""Business-unit authentication: ``authorization: Bearer <api key>``.

Keys are kept only as SHA-256 hashes, in a credentials file apart from the policy files
(product teams edit policies; keys are secrets). A presented key is hashed and compared
with every stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import PolicyError, PolicyProblem, Unauthenticated
from gateway.policy.loader import format_loc


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bu: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: str = ""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keys: tuple[_Entry, ...]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(bu: str) -> str:
    return f"hk_{bu}_{secrets.token_urlsafe(24)}"


@dataclass(frozen=True)
class Credentials:
    entries: tuple[tuple[str, bytes], ...]  # (bu, digest)
    source: str

    @staticmethod
    def load(path: Path) -> Credentials:
        shown = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PolicyError([PolicyProblem(shown, "", "credentials file not found")]) from None
        except yaml.YAMLError as exc:
            raise PolicyError([PolicyProblem(shown, "", f"not valid YAML: {exc}")]) from None
        try:
            parsed = _File.model_validate(raw)
        except ValidationError as exc:
            raise PolicyError(
                [PolicyProblem(shown, format_loc(e["loc"]), str(e["msg"])) for e in exc.errors()]
            ) from None
        return Credentials(tuple((e.bu, bytes.fromhex(e.sha256)) for e in parsed.keys), shown)

    @staticmethod
    def of(keys: Iterable[tuple[str, str]]) -> Credentials:
        """From (bu, plain key) pairs; for tests and tools."""
        return Credentials(tuple((bu, bytes.fromhex(hash_key(key))) for bu, key in keys), "<memory>")

    def business_units(self) -> set[str]:
        return {bu for bu, _ in self.entries}

    def authenticate(self, authorization: str | None) -> str:
        """The business unit a bearer key belongs to, or ``Unauthenticated``."""
        if not authorization:
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        if not authorization.isascii():
            # grpc hands on a value that is not UTF-8 decoded as Latin-1; either way no key has such characters.
            raise Unauthenticated(
                "the authorization metadata is not valid UTF-8 or not ASCII; send 'Bearer <api key>' "
                "with the key exactly as issued (API keys are printable ASCII)"
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <api key>'")
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = None
        for bu, stored in self.entries:  # no early exit: the time taken reveals nothing
            if hmac.compare_digest(digest, stored):
                found = bu
        if found is None:
            raise Unauthenticated("unknown API key")
        return found
