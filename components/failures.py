"""Which failures can succeed on a retry, and which never will.

Flows retry I/O (the artifact store, the DVC remote) with back-off; retrying a failure that
is deterministic (a file name too long for the file system, a 403 Forbidden, a bucket that
does not exist, bad input) only makes the user wait for the same error. A failure is
transient when its cause is a connection that failed or timed out, or a server that said it
is in trouble (HTTP 5xx, S3 SlowDown/ServiceUnavailable/InternalError/RequestTimeout);
everything else is not.
"""
from __future__ import annotations

import errno
import re

# S3 error codes that mean "try again later".
TRANSIENT_S3_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                                "RequestTimeTooSkewed", "OperationAborted", "ServerError"})
# What DVC (through botocore/aiohttp/fsspec) prints when the remote could not be reached or
# was overloaded; matched case-insensitively in its output.
_TRANSIENT_TEXT = re.compile(
    r"connection refused|connection reset|connection aborted|could not connect|cannot connect|"
    r"connect timeout|read timeout|timed out|timeout|temporary failure in name resolution|"
    r"endpointconnectionerror|serverdisconnected|broken pipe|"
    r"serviceunavailable|slowdown|internalerror|requesttimeout|\b50[0-4]\b|http 5\d\d",
    re.IGNORECASE)
_PERMANENT_TEXT = re.compile(
    r"accessdenied|forbidden|\b403\b|nosuchbucket|invalidaccesskeyid|signaturedoesnotmatch|"
    r"file name too long|no space left|not a directory|permission denied|held .* for over",
    re.IGNORECASE)
_PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC,
                               errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EINVAL})


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) can go away by itself, so that a retry may succeed."""
    from components.data.dvc import DvcError
    from components.storage import ArtifactCorrupted, ArtifactMissing

    for link in _chain(exc):
        if isinstance(link, (ArtifactMissing, ArtifactCorrupted)):
            return False
        if isinstance(link, DvcError):
            text = link.output or ""
            return not _PERMANENT_TEXT.search(text) and bool(_TRANSIENT_TEXT.search(text))
        code = getattr(link, "code", None)
        if isinstance(code, str) and code:  # minio's S3Error
            return code in TRANSIENT_S3_CODES
        status = getattr(link, "_code", None) or getattr(link, "_status_code", None) or getattr(link, "status", None)
        if isinstance(status, int) and 400 <= status < 600:  # minio's InvalidResponseError / ServerError
            return status >= 500
        if _is_connection_failure(link):
            return True
        if isinstance(link, OSError) and link.errno in _PERMANENT_ERRNOS:
            return False
    return False


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import urllib3
    except ImportError:  # pragma: no cover - urllib3 comes with minio
        return False
    return isinstance(exc, (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError,
                            urllib3.exceptions.NewConnectionError, urllib3.exceptions.MaxRetryError))
