"""
Secrets kept in files (ACL token secrets, the token a prepared query runs
with): read one back, tell whether a file is private, and compare secrets by a
fingerprint so that a state can say "differs" without holding the value in
anything it returns.

Plain module, no Salt dunders.
"""

import contextlib
import hashlib
import os
import re
import stat

from salt.exceptions import CommandExecutionError, SaltInvocationError

# An ACL SecretID or AccessorID; the one pattern for both (the ACL module and state use it).
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def read_secret_file(path, what="secret file", uuid=False):
    """
    The secret in ``path`` (surrounding whitespace removed), or None when the
    file does not exist. ``uuid=True``: it must be a UUID (an ACL SecretID).
    Raises ValueError (never quoting the content) for an empty or malformed
    file, OSError when it cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            secret = fh.read().strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not text") from None
    if not secret:
        raise ValueError(f"{what} {path} is empty")
    if uuid and not UUID.match(secret):
        raise ValueError(f"{what} {path} does not hold a UUID (Consul SecretIDs are UUIDs)")
    return secret


def load_secret(path, what="secret_file", uuid=False):
    """``read_secret_file`` with Salt's errors: SaltInvocationError for bad content, CommandExecutionError for I/O."""
    try:
        return read_secret_file(path, what, uuid=uuid)
    except ValueError as err:
        raise SaltInvocationError(str(err)) from None
    except OSError as err:
        raise CommandExecutionError(f"{what} {path} could not be read ({err.strerror})") from None


def is_private(path):
    """True when only the owner may read ``path`` (no group/other bits)."""
    return not stat.S_IMODE(os.stat(path).st_mode) & 0o077


def fingerprint(secret):
    """A short one-way fingerprint of a high-entropy secret, safe to compare and show."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def write_secret_file(path, secret):
    """Write ``secret`` to ``path`` readable by its owner only, whole or not at all."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secret + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
