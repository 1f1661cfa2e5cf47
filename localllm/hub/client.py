"""The connection to the Hub: configuration read at call time, huggingface_hub's HTTP session,
one translation of its errors into ours, and our retry policy.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN_PATH`` once, when it is
imported. A test, a long-lived TUI or a caller that changes the environment afterwards must
still be obeyed, so every call here reads the environment again, passes ``endpoint=`` and
``token=`` explicitly, and refreshes the library settings that cannot be passed
(:func:`sync_library`).

Imports: the library is imported inside functions only (``localllm --help``, ``list`` and a
local ``run`` never load it), and only its narrow modules: the session and error checks
(``huggingface_hub.utils._http`` through ``huggingface_hub.utils``), ``errors``, ``constants``
and, for a file's metadata, ``file_download``; ``HfApi`` (``huggingface_hub.hf_api``, the
slowest part to import, ~50 ms) only for ``model_info``. Search is one GET of ``/api/models``
through the library's session rather than ``HfApi.list_models``: that call goes through
``http_backoff``, which retries a refused connection five times (about 25 s with no network)
with no knob to turn it off.

Retries: ours (:func:`retrying`, ``LOCALLLM_RETRY_BACKOFF``), never the library's
``http_backoff`` (five retries, 1-8 s apart, whatever the failure). A connection that cannot
be made at all (DNS failure, refused, connect timeout) is reported at once: with no network
a retry only makes the user wait. A 5xx/429 or a connection lost mid-answer is retried.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from localllm.errors import LocalLLMError, ModelNotFoundError, NetworkError, OfflineError

if TYPE_CHECKING:
    import httpx2
    from huggingface_hub import HfApi

Say = Callable[[str], None]
T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
LIBRARY_NAME = "localllm"
LIBRARY_VERSION = "0.1"
MAX_FAILURES = 5  # consecutive failed attempts (without progress) before giving up


class GatedRepoError(NetworkError):
    """The repo is gated or private and this request is not allowed to read it."""


class RepoNotFoundError(ModelNotFoundError):
    """No such repository (or revision) on the Hub."""


class EntryNotFoundError(ModelNotFoundError):
    """The repository exists but has no such file."""


class NoGGUFError(ModelNotFoundError):
    """The repository has no GGUF file."""


class Cancelled(Exception):
    """Raise this (or anything) from a progress callback to stop a download, e.g. when a TUI
    worker is cancelled: the partial file is kept and the next try resumes it."""


class Transient(Exception):
    """A failure worth retrying (connection reset, timeout, 5xx, 429, short read). Its
    ``__cause__`` is the error to report when the retries run out."""


class Unreachable(Transient):
    """No connection could be made (DNS failure, connection refused, connect timeout). A
    metadata call reports it at once; a download that had reached the Hub retries it (a
    network blip in the middle of a long transfer)."""


# -- configuration, read at every call ---------------------------------------------------


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/") or DEFAULT_ENDPOINT


def _env_true(*names: str) -> bool:
    """Whether any of these variables is set to a true value, as huggingface_hub reads them."""
    return any(
        (os.environ.get(n) or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for n in names
    )


def is_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _token_path() -> str:
    if os.environ.get("HF_TOKEN_PATH"):
        return os.path.expandvars(os.path.expanduser(os.environ["HF_TOKEN_PATH"]))
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        home = os.path.join(xdg, "huggingface")
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "token")


def telemetry_disabled() -> bool:
    """Whether huggingface_hub's telemetry stays off: yes unless the user set
    ``HF_HUB_DISABLE_TELEMETRY`` themselves (to a false value, to opt in).

    localllm is an offline, private tool: the library's telemetry (``send_telemetry`` to
    ``/api/telemetry/...``, its once-a-day request of the agent-harness registry at
    ``/api/agent-harnesses``, the extra user-agent fields) is off by default, whereas the
    library turns it on unless told otherwise. ``DISABLE_TELEMETRY`` and ``DO_NOT_TRACK``
    still turn it off whatever ``HF_HUB_DISABLE_TELEMETRY`` says, as in the library."""
    if _env_true("DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        return True
    if (os.environ.get("HF_HUB_DISABLE_TELEMETRY") or "").strip() == "":
        return True
    return _env_true("HF_HUB_DISABLE_TELEMETRY")


def sync_library() -> None:
    """Bring huggingface_hub's import-time settings up to date with the environment: offline
    mode (its request hook refuses every request while it is on), telemetry and the token
    file. Its warnings stay quiet unless ``HF_HUB_VERBOSITY`` or ``HF_DEBUG`` asks for them:
    what went wrong reaches the user as one error line."""
    import logging

    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = is_offline()
    constants.HF_TOKEN_PATH = _token_path()
    constants.HF_HUB_DISABLE_TELEMETRY = telemetry_disabled()
    if not os.environ.get("HF_HUB_VERBOSITY") and not os.environ.get("HF_DEBUG"):
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def token() -> str | None:
    """``HF_TOKEN``, else the token `hf auth login` saved (huggingface_hub's ``get_token``)."""
    from huggingface_hub import get_token

    sync_library()
    return get_token()


def timeout() -> float:
    """Seconds to wait for a connection or for the next bytes (``LOCALLLM_HUB_TIMEOUT``)."""
    try:
        return max(0.1, float(os.environ.get("LOCALLLM_HUB_TIMEOUT", "30")))
    except ValueError:
        return 30.0


def retry_backoff() -> float:
    """First retry delay in seconds, doubled each time (``LOCALLLM_RETRY_BACKOFF``)."""
    try:
        return max(0.0, float(os.environ.get("LOCALLLM_RETRY_BACKOFF", "1")))
    except ValueError:
        return 1.0


def repo_url(repo: str) -> str:
    return f"{endpoint()}/{repo}"


def resolve_url(repo: str, filename: str, revision: str = "main") -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo, filename, revision=revision, endpoint=endpoint())


def check_online(what: str) -> None:
    if is_offline():
        raise OfflineError(
            f"offline mode is on (HF_HUB_OFFLINE=1): cannot {what}; the Hub was not contacted",
            hint="unset HF_HUB_OFFLINE to use the network",
        )


def get(url: str, params: dict[str, Any] | None = None) -> httpx2.Response:
    """One GET of the Hub's API through huggingface_hub's shared session (its proxy
    settings, user agent, offline hook), checked by its ``hf_raise_for_status`` (whose errors
    :func:`translate` maps). No retry here: :func:`call` applies ours."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    sync_library()
    response = get_session().get(url, params=params, headers=headers(), timeout=timeout())
    hf_raise_for_status(response)
    return response


def get_json(url: str, params: dict[str, Any] | None = None) -> tuple[Any, str | None]:
    """:func:`get`'s JSON body and the URL of the next page (``Link: rel="next"``) if any."""
    response = get(url, params)
    try:
        data = response.json()
    except ValueError as exc:
        raise network_error(ValueError(f"the answer to {url} is not JSON ({exc})")) from None
    return data, response.links.get("next", {}).get("url")


def api() -> HfApi:
    """huggingface_hub's client for the endpoint and token of this moment."""
    from huggingface_hub import HfApi

    sync_library()
    return HfApi(
        endpoint=endpoint(),
        token=token() or False,
        library_name=LIBRARY_NAME,
        library_version=LIBRARY_VERSION,
    )


def headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for a request of our own to the Hub: the library's user agent and token."""
    from huggingface_hub.utils import build_hf_headers

    sync_library()
    return build_hf_headers(
        token=token() or False,
        library_name=LIBRARY_NAME,
        library_version=LIBRARY_VERSION,
        headers=extra,
    )


# -- errors --------------------------------------------------------------------------------

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_transient_status(code: int) -> bool:
    return code in TRANSIENT_STATUS or 500 <= code < 600


def network_error(exc: BaseException) -> NetworkError:
    return NetworkError(
        f"could not reach the Hub at {endpoint()}: {exc}",
        hint="check the connection, or set HF_ENDPOINT to a mirror",
    )


def _offline_error() -> OfflineError:
    return OfflineError(
        "offline mode is on (HF_HUB_OFFLINE=1): the Hub was not contacted",
        hint="unset HF_HUB_OFFLINE to use the network",
    )


def translate(exc: BaseException, repo: str, filename: str | None = None) -> BaseException:
    """huggingface_hub's (and httpx's) errors as ours. Transient failures come back as
    :class:`Transient` (with the final error as its cause); anything unknown unchanged."""
    import httpx2
    from huggingface_hub import errors as hf

    if isinstance(exc, LocalLLMError | Transient):
        return exc
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return _offline_error()
    licence = f"accept its licence at {repo_url(repo)} and set HF_TOKEN to a token of that account"
    status = exc.response.status_code if isinstance(exc, hf.HfHubHTTPError) else None
    # GatedRepoError is a RepositoryNotFoundError: it must be tested first.
    if isinstance(exc, hf.GatedRepoError):
        if token():
            return GatedRepoError(
                f"access to {repo} was refused with your HF_TOKEN (the Hub answered {status}): "
                "the repo is gated and its licence is not accepted, or the token lacks access",
                hint=f"accept the licence at {repo_url(repo)}, or use a token that has access",
            )
        return GatedRepoError(
            f"{repo} is gated: it needs a login (the Hub answered {status})", hint=licence
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return RepoNotFoundError(
            f"no repository '{repo}' on {endpoint()}",
            hint="check the name; if it is private, set HF_TOKEN",
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return RepoNotFoundError(f"{repo} has no such revision", hint="check the @revision")
    if isinstance(exc, hf.EntryNotFoundError):
        return EntryNotFoundError(
            f"{repo} has no file '{filename}'", hint=f"see `localllm pull {repo} --list`"
        )
    if isinstance(exc, hf.HfHubHTTPError):
        what = f"{repo}/{filename}" if filename else repo
        message = exc.server_message or ""
        if status in (401, 403):
            return GatedRepoError(
                f"the Hub refused access to {what} ({status})"
                + (f": {message}" if message else ""),
                hint=licence,
            )
        err = NetworkError(
            f"the Hub answered {status} for {what}" + (f": {message.strip()}" if message else "")
        )
        if status is not None and is_transient_status(status):
            wrapped = Transient(f"the Hub answered {status}")
            wrapped.__cause__ = err
            return wrapped
        return err
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
        wrapped = Unreachable(str(exc) or type(exc).__name__)
        wrapped.__cause__ = network_error(exc)
        return wrapped
    if isinstance(exc, httpx2.TimeoutException | httpx2.NetworkError | httpx2.RemoteProtocolError):
        wrapped = Transient(str(exc) or type(exc).__name__)
        wrapped.__cause__ = network_error(exc)
        return wrapped
    if isinstance(exc, httpx2.HTTPError | ConnectionError | TimeoutError):
        return network_error(exc)
    return exc


def reraise(exc: BaseException, repo: str, filename: str | None = None) -> NoReturn:
    """Raise :func:`translate`'s answer for ``exc`` (a :class:`Transient` keeps the error to
    report when the retries run out as its cause)."""
    mapped = translate(exc, repo, filename)
    if mapped is exc:
        raise exc
    if isinstance(mapped, Transient):
        raise mapped
    raise mapped from None


def call(
    fn: Callable[[], T],
    repo: str,
    filename: str | None = None,
    *,
    what: str = "",
) -> T:
    """Call the library, translating its errors. A 5xx, 429 or a connection lost mid-answer
    is retried with exponential backoff (``LOCALLLM_RETRY_BACKOFF``, :data:`MAX_FAILURES`
    attempts); a Hub that cannot be reached at all is reported after the first attempt."""

    def attempt() -> T:
        try:
            return fn()
        except Exception as exc:
            reraise(exc, repo, filename)

    return retrying(attempt, what or f"reading {repo}")


def _final(exc: Transient) -> LocalLLMError:
    cause = exc.__cause__
    return cause if isinstance(cause, LocalLLMError) else network_error(cause or exc)


def retrying(
    fn: Callable[[], T], what: str, say: Say | None = None, *, retry_unreachable: bool = False
) -> T:
    """Call ``fn``, retrying :class:`Transient` failures with exponential backoff; an
    :class:`Unreachable` one only with ``retry_unreachable``."""
    delay = retry_backoff()
    for attempt in range(1, MAX_FAILURES + 1):
        try:
            return fn()
        except Transient as exc:
            if attempt == MAX_FAILURES or (isinstance(exc, Unreachable) and not retry_unreachable):
                raise _final(exc) from None
            if say:
                say(f"{what}: {exc}; retrying in {delay:.1f}s")
            sleep_backoff(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")  # pragma: no cover


def sleep_backoff(delay: float) -> None:
    time.sleep(delay * (1 + random.random() / 4))


def as_dict(obj: Any) -> dict[str, Any]:
    """A library dataclass (ModelInfo) as a plain dict of its public, JSON-friendly fields."""
    out: dict[str, Any] = {}
    for key, value in vars(obj).items():
        if key.startswith("_") or value is None:
            continue
        if isinstance(value, str | int | float | bool | list | dict):
            out[key] = value
    return out
