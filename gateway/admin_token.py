"""The local admin token: what the kill-switch admin API takes when no
``HERALD_ADMIN_TOKEN`` is set.

A gateway started without one (``scripts/run``, a bare ``herald serve``) makes a random
token once and keeps it in ``<data dir>/admin-token``, readable by its owner only
(mode 0600), and uses it from then on; ``herald kill`` run on the same machine reads the
same file when it is given no token. So a newcomer's kill switch works, and no token is
ever printed: the log names the file, not what is in it. In production
``HERALD_ADMIN_TOKEN`` is set and this file is neither made nor read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from gateway.config import Settings

FILE_NAME = "admin-token"
DEFAULT_DATA_DIR: Path = Settings.model_fields["data_dir"].default  # the gateway's own default


class TokenFileError(Exception):
    pass


def token_file(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def read_token(path: Path) -> str:
    """The token kept in ``path``; FileNotFoundError when there is none."""
    token = path.read_text(encoding="ascii").strip()
    if not token:
        raise TokenFileError(f"{path} is empty: delete it, and the gateway makes a new token at its next start")
    return token


def local_token(data_dir: Path) -> tuple[str, Path, bool]:
    """The token of ``<data dir>/admin-token``, made when absent: (token, its file,
    whether it was made now). Gateway processes starting together agree on one token:
    it is written to a file of its own and linked into place, so a reader never sees a
    half-written one and the first process to link it wins."""
    path = token_file(data_dir)
    with contextlib.suppress(FileNotFoundError):
        return read_token(path), path, False
    data_dir.mkdir(parents=True, exist_ok=True)
    draft = data_dir / f".{FILE_NAME}.{os.getpid()}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # whatever the umask, and a draft left by a process of the same pid
        os.write(descriptor, (f"hat_{secrets.token_urlsafe(32)}\n").encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    made = True
    try:
        os.link(draft, path)
    except FileExistsError:
        made = False  # another process made it first: theirs is the token
    finally:
        draft.unlink(missing_ok=True)
    return read_token(path), path, made
