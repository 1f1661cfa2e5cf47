"""The one owner of the model: the chat session and the lock around it.

Loading, counting the context, generating and closing run in the app's thread workers
(``group="engine"`` for load and generate, exclusive: a new one cancels the old one), one at a
time under :attr:`EngineHost.lock` (llama.cpp contexts are not thread-safe, and a cancelled
worker may still be finishing its last token). The workers never touch widgets: they post the
messages of :mod:`localllm.tui.messages` to the app, which is thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App
from textual.worker import get_current_worker

from localllm.errors import InferenceError, LocalLLMError
from localllm.profiles import Profile
from localllm.streaming import Delta, TurnResult, stream_turn
from localllm.textin import clean_text
from localllm.tui.messages import ContextCounted, ModelFailed, ModelLoaded, TurnFinished
from localllm.tui.state import Turn

EngineFactory = Callable[[Path, Profile], Any]
FLUSH_S = 0.3  # streamed text is batched: ~3 screen updates a second (each costs a frame)


def default_engine(path: Path, profile: Profile) -> Any:
    """Load ``path`` as :class:`localllm.engine.Engine` with the profile's load settings."""
    from localllm.loading import open_engine

    return open_engine(path, profile)


def backend_of(engine: Any) -> str:
    try:
        from localllm.backend import backend_name

        return backend_name(getattr(getattr(engine, "options", None), "n_gpu_layers", None))
    except Exception:  # a stand-in engine, or a build without the helper
        return "CPU"


def as_error(exc: BaseException, what: str) -> LocalLLMError:
    if isinstance(exc, LocalLLMError):
        return exc
    return InferenceError(f"{what}: {exc}")


class EngineHost:
    """Runs the engine work of ``app`` in its thread workers, one job at a time."""

    def __init__(self, app: App[Any], factory: EngineFactory | None = None) -> None:
        self.app = app
        self.factory = factory or default_engine
        self.session: Any = None  # a ChatSession; touched only under the lock
        self.lock = threading.Lock()

    # -- jobs ----------------------------------------------------------------------------------

    def load(self, path: Path, name: str, profile: Profile) -> None:
        """Load ``path`` (freeing the model loaded before); posts ModelLoaded or ModelFailed.

        Run from a worker, the engine's default thread count leaves this process's own busy
        threads (the UI drawing its first screen) out of the CPUs other work keeps busy.
        """
        self.app.run_worker(
            partial(self._load, Path(path), name, profile),
            name="load",
            group="engine",
            exclusive=True,
            thread=True,
            exit_on_error=False,
        )

    def count(self, history: list[dict[str, Any]], profile: Profile, conversation_id: str) -> None:
        """Count the tokens ``history`` fills; posts ContextCounted (nothing on failure)."""
        self.app.run_worker(
            partial(self._count, list(history), profile, conversation_id),
            name="count",
            group="count",
            thread=True,
            exit_on_error=False,
        )

    def generate(self, turn: Turn, emit: Callable[[Delta], None]) -> None:
        """Answer ``turn``, passing batched text to ``emit`` (from the worker thread: it must
        only post messages); posts TurnFinished at the end, whatever happened."""
        self.app.run_worker(
            partial(self._generate, turn, emit),
            name="generate",
            group="engine",
            exclusive=True,
            thread=True,
            exit_on_error=False,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Free the model (after the app has exited and the workers have stopped)."""
        if self.lock.acquire(timeout=timeout):
            try:
                if self.session is not None:
                    _free(self.session)
                    self.session = None
            finally:
                self.lock.release()

    # -- worker bodies (thread) ------------------------------------------------------------

    def _load(self, path: Path, name: str, profile: Profile) -> None:
        from localllm.session import ChatSession

        worker = get_current_worker()
        with self.lock:
            if worker.is_cancelled:
                return
            old, self.session = self.session, None
            if old is not None:
                _free(old)
            try:
                engine = self.factory(path, profile)
            except Exception as exc:
                self.app.post_message(ModelFailed(path, name, as_error(exc, "loading failed")))
                return
            projector, problem = _open_projector(engine, path, bool(profile.verbose))
            self.session = ChatSession(engine, profile, projector=projector)
            backend = backend_of(engine)
            if worker.is_cancelled:
                return  # another load is waiting for the lock: it reports instead
        self.app.post_message(
            ModelLoaded(path, name, engine, backend, profile, projector is not None, problem)
        )

    def _count(self, history: list[dict[str, Any]], profile: Profile, ident: str) -> None:
        from localllm.session import ChatSession

        with self.lock:
            session = self.session
            if session is None:
                return
            try:
                probe = ChatSession(session.engine, profile, messages=history)
                tokens = len(session.engine.tokenize(probe.render()))
            except Exception:  # only a display figure: never worth an error
                return
        self.app.post_message(ContextCounted(tokens, ident))

    def _generate(self, turn: Turn, emit: Callable[[Delta], None]) -> None:
        worker = get_current_worker()

        def cancel() -> bool:
            return worker.is_cancelled or turn.stop.is_set()

        with self.lock:
            session = self.session
            result: TurnResult | None = None
            if session is None:
                result = TurnResult(
                    error=InferenceError("no model is loaded", hint="Ctrl+O picks one")
                )
            else:
                result = _revive(session)
            if session is not None and result is None:
                session.messages = [dict(m) for m in turn.history]
                profile = turn.profile
                if profile.system_prompt:
                    profile = profile.replace(system_prompt=clean_text(profile.system_prompt)[0])
                session.profile = profile
                if session.projector is None:
                    session.messages = [_without_images(m) for m in session.messages]
                result = stream_turn(
                    session,
                    turn.text,
                    emit=emit,
                    cancel=cancel,
                    interval=FLUSH_S,
                    images=turn.images,
                    constraint=turn.constraint,
                )
        self.app.post_message(TurnFinished(turn, result))


def _revive(session: Any) -> TurnResult | None:
    """Load the model again when its engine process died (an engine in a child process,
    see :mod:`localllm.enginechild`); the result to report when that fails, else None."""
    engine = session.engine
    if not getattr(engine, "isolated", False) or engine.alive:
        return None
    try:
        engine.reopen()
    except Exception as exc:
        return TurnResult(error=as_error(exc, "reloading the model failed"))
    return None


def _open_projector(engine: Any, path: Path, verbose: bool) -> tuple[Any, LocalLLMError | None]:
    """The vision projector found beside the model (its store manifest, else an
    ``mmproj*.gguf`` in its folder), loaded for ``engine``; (None, None) for a text-only
    model, (None, the error) when the projector is there but cannot be loaded: the model is
    then used for text only. An engine in a child process has none (the projector needs the
    model in this process)."""
    from localllm import vision

    if getattr(engine, "isolated", False):
        return None, None

    found = vision.find_projector(path)
    if found is None:
        return None, None
    try:
        return vision.Projector(engine, found, verbose=verbose), None
    except Exception as exc:
        return None, as_error(exc, f"the projector {found.name} could not be loaded")


def _free(session: Any) -> None:
    if session.projector is not None:
        session.projector.close()
        session.projector = None
    session.engine.close()


def _without_images(message: dict[str, Any]) -> dict[str, Any]:
    """A history message for a text-only model: its images (and their markers) left out."""
    if not message.get("images"):
        return message
    from localllm.vision import MARKER

    out = {k: v for k, v in message.items() if k != "images"}
    out["content"] = str(out["content"]).replace(f"{MARKER}\n", "")
    return out
