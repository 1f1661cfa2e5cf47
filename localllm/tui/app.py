"""The chat app: state, key bindings, slash commands and the worker that owns the model.

Threads: the UI runs on Textual's event loop; everything that touches the engine (loading a
model, generating) runs in ``@work(thread=True, group="engine")`` workers, one at a time under
``_engine_lock`` (llama.cpp contexts are not thread-safe, and an exclusive worker that was
cancelled may still be finishing its last token). Workers never touch widgets: they post
messages (``AssistantMessage.Delta`` / ``Finished``, ``ChatApp.ModelLoaded`` ...), which is
thread-safe. Downloads run in their own group so the chat stays usable meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.message import Message
from textual.worker import Worker, WorkerState, get_current_worker

from localllm import conversations
from localllm.conversations import Conversation
from localllm.errors import InferenceError, LocalLLMError, ProfileError, UsageError
from localllm.profiles import MODES, Profile
from localllm.tui.screens.chat import ChatScreen
from localllm.tui.screens.profiles import SAMPLING_FIELDS
from localllm.tui.widgets.messages import AssistantMessage, ChatLog, UserMessage
from localllm.tui.widgets.prompt import PromptInput
from localllm.tui.widgets.status import StatusBar

EngineFactory = Callable[[Path, Profile], Any]

FLUSH_S = 0.2  # streamed text is batched: ~5 screen updates a second (each costs a frame)
LIVE_ANSWERS = 2  # answers kept as live Markdown widgets; older ones are archived
LOAD_FIELDS = ("context_length", "threads", "gpu_layers", "verbose")


def default_engine(path: Path, profile: Profile) -> Any:
    """Load ``path`` as :class:`localllm.engine.Engine` with the profile's load settings."""
    from localllm.loading import open_engine

    return open_engine(path, profile)


def _backend(engine: Any) -> str:
    try:
        from localllm.engine import backend_name

        return backend_name(getattr(getattr(engine, "options", None), "n_gpu_layers", None))
    except Exception:  # a stand-in engine, or a build without the helper
        return "CPU"


def _as_error(exc: BaseException, what: str) -> LocalLLMError:
    if isinstance(exc, LocalLLMError):
        return exc
    return InferenceError(f"{what}: {exc}")


@dataclass(eq=False)
class _Turn:
    """One request in flight."""

    text: str
    widget: AssistantMessage
    profile: Profile
    history: list[dict[str, Any]]
    conversation: Conversation
    stop: threading.Event = field(default_factory=threading.Event)


class ChatApp(App[None]):
    """``localllm chat``."""

    CSS_PATH = "app.tcss"
    TITLE = "localllm"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("escape", "stop", "Stop", show=False),
        Binding("ctrl+c", "stop", "Stop", show=False, priority=True),
        Binding("f1", "help", "Help"),
        Binding("ctrl+o", "models", "Model"),
        Binding("ctrl+p", "profiles", "Profile"),
        Binding("ctrl+s", "sampling", "Sampling"),
        Binding("ctrl+t", "toggle_mode", "Mode"),
        Binding("ctrl+g", "system_prompt", "System"),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+l", "conversations", "Chats"),
    ]

    # -- messages posted by the workers ------------------------------------------------------

    class ModelLoaded(Message):
        def __init__(
            self, path: Path, name: str, engine: Any, backend: str, profile: Profile
        ) -> None:
            super().__init__()
            self.path = path
            self.name = name
            self.engine = engine
            self.backend = backend
            self.profile = profile

    class ModelFailed(Message):
        def __init__(self, path: Path, name: str, error: LocalLLMError) -> None:
            super().__init__()
            self.path = path
            self.name = name
            self.error = error

    class ContextCounted(Message):
        def __init__(self, tokens: int, conversation_id: str) -> None:
            super().__init__()
            self.tokens = tokens
            self.conversation_id = conversation_id

    class TurnFinished(Message):
        """A request is over: what to save and show (the answer's widget may be gone)."""

        def __init__(self, turn: _Turn, result: AssistantMessage.Finished) -> None:
            super().__init__()
            self.turn = turn
            self.result = result

    class DownloadProgress(Message):
        def __init__(self, ref: str, done: int, total: int | None) -> None:
            super().__init__()
            self.ref = ref
            self.done = done
            self.total = total

    class DownloadFinished(Message):
        def __init__(
            self, ref: str, name: str | None, path: Path | None, error: LocalLLMError | None = None
        ) -> None:
            super().__init__()
            self.ref = ref
            self.name = name
            self.path = path
            self.error = error

    # -- setup ---------------------------------------------------------------------------------

    def __init__(
        self,
        model: Path | None,
        profile: Profile,
        *,
        model_name: str | None = None,
        resume: str | None = None,
        engine_factory: EngineFactory | None = None,
        expand_reasoning: bool = False,
        timings: bool = True,
    ) -> None:
        super().__init__()
        self.profile = profile
        self.model_path: Path | None = None  # the loaded model
        self.model_name: str | None = None
        self._initial_model = (Path(model), model_name) if model is not None else None
        self._resume = resume
        self._engine_factory = engine_factory or default_engine
        self.expand_reasoning = expand_reasoning
        self.timings = timings
        self.session: Any = None  # ChatSession; used by the engine workers only
        self._engine_lock = threading.Lock()
        self._loaded_profile: Profile | None = None
        self.loading: str | None = None
        self.history: list[dict[str, Any]] = []
        self.conversation = Conversation.new()
        self.turn: _Turn | None = None
        self._turns: set[_Turn] = set()  # in flight, stopping ones included
        self.downloading: str | None = None

    async def on_mount(self) -> None:
        await self.push_screen(ChatScreen(timings=self.timings))
        self._update_status()
        if self._resume:
            self.resume(self._resume, fallback=self._initial_model)
        elif self._initial_model is not None:
            self.load_model(*self._initial_model)

    # -- small helpers ---------------------------------------------------------------------

    def _chat_screen(self) -> ChatScreen:
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                return screen
        raise LookupError("no chat screen")

    @property
    def chat_log(self) -> ChatLog:
        return self._chat_screen().query_one(ChatLog)

    @property
    def prompt(self) -> PromptInput:
        return self._chat_screen().query_one(PromptInput)

    @property
    def busy(self) -> bool:
        """An answer is being generated (and was not asked to stop)."""
        return self.turn is not None and not self.turn.stop.is_set()

    def _update_status(self, **changes: Any) -> None:
        try:
            bar = self._chat_screen().query_one(StatusBar)
        except (LookupError, NoMatches):
            return
        activity = ""
        if self.loading:
            activity = f"loading {self.loading}…"
        elif self.turn is not None:
            activity = "answering…" if not self.turn.stop.is_set() else "stopping…"
        bar.set(profile=self.profile.name, mode=self.profile.mode, activity=activity, **changes)

    def error(self, exc: LocalLLMError, title: str = "Error") -> None:
        """Show a core error as a notification (message and hint)."""
        message = exc.message + (f"\n{exc.hint}" if exc.hint else "")
        self.notify(message, title=title, severity="error", timeout=8)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.busy  # otherwise Esc and Ctrl+C keep their usual meaning
        return True

    # -- model loading ---------------------------------------------------------------------

    def load_model(self, path: Path, name: str | None = None) -> None:
        """Load ``path`` in the background (the chat stays usable, sending waits)."""
        name = name or self._display_name(path)
        if self.turn is not None:
            self.turn.stop.set()
        self.loading = name
        self._update_status()
        self._load_worker(Path(path), name, self.profile)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _load_worker(self, path: Path, name: str, profile: Profile) -> None:
        from localllm.session import ChatSession

        worker = get_current_worker()
        with self._engine_lock:
            if worker.is_cancelled:
                return
            old, self.session = self.session, None
            if old is not None:
                old.engine.close()
            try:
                engine = self._engine_factory(path, profile)
            except Exception as exc:
                self.post_message(self.ModelFailed(path, name, _as_error(exc, "loading failed")))
                return
            self.session = ChatSession(engine, profile)
            backend = _backend(engine)
            if worker.is_cancelled:
                return  # another load is waiting for the lock: it reports instead
        self.post_message(self.ModelLoaded(path, name, engine, backend, profile))

    def on_chat_app_model_loaded(self, message: ModelLoaded) -> None:
        switched = self.model_path is not None and self.model_path != message.path
        self.loading = None
        self.model_path = message.path
        self.model_name = message.name
        self._loaded_profile = message.profile
        engine = message.engine
        self._update_status(
            model=message.name,
            quant=self._quant(message.path),
            ctx_total=getattr(engine, "n_ctx", None),
            ctx_used=None,
            backend=message.backend,
        )
        self.count_context()
        if switched:
            self.notify(f"loaded {message.name}", title="Model")
        if not getattr(engine, "is_chat_model", True):
            self.notify(
                "this is a base model (no chat template): it continues the text",
                title="Note",
                severity="warning",
            )

    def count_context(self) -> None:
        """Show how much of the context the conversation fills (counted in the background)."""
        if not self.history:
            self._update_status(ctx_used=0 if self.model_path else None)
            return
        if self.model_path is not None and not self.loading:
            self._count_worker(list(self.history), self.profile, self.conversation.id)

    @work(thread=True, group="count", exit_on_error=False)
    def _count_worker(self, history: list[dict[str, Any]], profile: Profile, ident: str) -> None:
        from localllm.session import ChatSession

        with self._engine_lock:
            session = self.session
            if session is None:
                return
            try:
                probe = ChatSession(session.engine, profile, messages=history)
                tokens = len(session.engine.tokenize(probe.render()))
            except Exception:  # only a display figure: never worth an error
                return
        self.post_message(self.ContextCounted(tokens, ident))

    def on_chat_app_context_counted(self, message: ContextCounted) -> None:
        if message.conversation_id == self.conversation.id and self.turn is None:
            self._update_status(ctx_used=message.tokens)

    def on_chat_app_model_failed(self, message: ModelFailed) -> None:
        from localllm.tui.screens.dialogs import ErrorDialog

        self.loading = None
        self.model_path = None
        self.model_name = None
        self._update_status(model=None, quant=None, ctx_total=None, ctx_used=None, backend=None)
        self.push_screen(
            ErrorDialog(
                f"Could not load {message.name}",
                message.error.message,
                (message.error.hint or "") + " · Ctrl+O picks another model",
            )
        )

    @staticmethod
    def _manifest_for(path: Path) -> Any:
        from localllm import store

        try:
            resolved = path.resolve()
            return next((m for m in store.installed() if m.primary.resolve() == resolved), None)
        except (OSError, LocalLLMError):
            return None

    def _display_name(self, path: Path) -> str:
        """The store name, else the file name without ``.gguf`` and its quant suffix."""
        manifest = self._manifest_for(path)
        if manifest is not None:
            return str(manifest.name)
        stem = path.name.removesuffix(".gguf")
        quant = self._quant(path)
        if quant and stem.lower().endswith(quant.lower()) and len(stem) > len(quant) + 1:
            trimmed = stem[: -len(quant)]
            if trimmed[-1] in ".-_":
                return trimmed[:-1]
        return stem

    def _quant(self, path: Path) -> str | None:
        manifest = self._manifest_for(path)
        if manifest is not None and manifest.quant:
            return str(manifest.quant)
        from localllm.refs import parse_quant

        return parse_quant(path.name)

    # -- sending and stopping -------------------------------------------------------------

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        stripped = text.strip()
        if stripped.startswith("/") and not stripped.startswith("//"):
            await self.run_command(stripped)
            return
        if stripped.startswith("//"):
            text = text.replace("/", "", 1)
        await self.send_prompt(text)

    async def send_prompt(self, text: str) -> bool:
        """Start answering ``text``; False (with a notification) when that cannot happen now."""
        if self.busy:
            self.notify("still answering: Esc stops it", severity="warning")
            self.prompt.load_text(text)
            return False
        if self.loading:
            self.notify(f"{self.loading} is still loading", severity="warning")
            self.prompt.load_text(text)
            return False
        if self.model_path is None:
            self.notify("no model is loaded: Ctrl+O picks one", severity="warning")
            self.prompt.load_text(text)
            return False
        log = self.chat_log
        widget = AssistantMessage(
            streaming=True,
            show_reasoning=self.profile.show_reasoning,
            expand_reasoning=self.expand_reasoning,
        )
        await log.mount_all([UserMessage(text), widget])
        log.scroll_end(animate=False)
        try:
            self.conversation.set_settings(**self._settings_record())
            self.conversation.add_message("user", text)
        except LocalLLMError as exc:
            self.error(exc, "Not saved")
        turn = _Turn(text, widget, self.profile, list(self.history), self.conversation)
        self.turn = turn
        self._turns.add(turn)
        self._update_status()
        self.refresh_bindings()
        self._generate_worker(turn)
        return True

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _generate_worker(self, turn: _Turn) -> None:
        from localllm.session import AnswerText, ReasoningText

        worker = get_current_worker()
        widget = turn.widget

        def cancel() -> bool:
            return worker.is_cancelled or turn.stop.is_set()

        answer: list[str] = []
        reasoning: list[str] = []
        reasoning_tokens: int | None = None
        stats: Any = None
        error: LocalLLMError | None = None
        history: list[dict[str, Any]] | None = None
        with self._engine_lock:
            session = self.session
            if session is None:
                error = InferenceError("no model is loaded", hint="Ctrl+O picks one")
            else:
                session.messages = [dict(m) for m in turn.history]
                session.profile = turn.profile
                pending_answer: list[str] = []
                pending_reasoning: list[str] = []
                pending_tokens = 0
                last = 0.0
                try:
                    for event in session.send(turn.text, cancel=cancel):
                        if isinstance(event, AnswerText):
                            answer.append(event.text)
                            pending_answer.append(event.text)
                        elif isinstance(event, ReasoningText):
                            reasoning.append(event.text)
                            pending_reasoning.append(event.text)
                            pending_tokens += int(getattr(event, "tokens", 1) or 0)
                        else:
                            stats = event
                            continue
                        now = time.monotonic()
                        if now - last >= FLUSH_S:
                            widget.post_message(
                                AssistantMessage.Delta(
                                    "".join(pending_answer),
                                    "".join(pending_reasoning),
                                    pending_tokens,
                                )
                            )
                            pending_answer.clear()
                            pending_reasoning.clear()
                            pending_tokens = 0
                            last = now
                    history = [dict(m) for m in session.messages]
                except Exception as exc:
                    error = _as_error(exc, "generation failed")
                if pending_answer or pending_reasoning:
                    widget.post_message(
                        AssistantMessage.Delta(
                            "".join(pending_answer), "".join(pending_reasoning), pending_tokens
                        )
                    )
                last_turn = getattr(session, "last_turn", None)
                if error is None and last_turn is not None:
                    answer = [last_turn.answer]
                    reasoning = [last_turn.reasoning]
                    reasoning_tokens = getattr(last_turn, "reasoning_tokens", None)

        def finished() -> AssistantMessage.Finished:
            return AssistantMessage.Finished(
                widget,
                answer="".join(answer),
                reasoning="".join(reasoning),
                stats=stats,
                error=error,
                history=history,
                reasoning_tokens=reasoning_tokens,
            )

        # The widget renders its copy after its last Delta; the app saves the turn even if the
        # widget was removed meanwhile (a new chat while answering).
        widget.post_message(finished())
        self.post_message(self.TurnFinished(turn, finished()))

    def on_chat_app_turn_finished(self, message: TurnFinished) -> None:
        turn = message.turn
        event = message.result
        self._turns.discard(turn)
        history = event.history
        if event.error is not None:
            error = event.error
            if isinstance(error, UsageError) and "context" in error.message:
                error = UsageError(
                    error.message,
                    hint="start a new chat (Ctrl+N), or use a profile with a larger context_length",
                )
            self.error(error, "The answer failed")
        else:
            if history is not None and turn.conversation is self.conversation:
                self.history = history
            stats = event.stats
            try:
                turn.conversation.add_message(
                    "assistant",
                    event.answer,
                    reasoning=event.reasoning or None,
                    stopped=True if event.stopped else None,
                    stats=stats.as_dict() if hasattr(stats, "as_dict") else None,
                )
            except LocalLLMError as exc:
                self.error(exc, "Not saved")
            if stats is not None and turn.conversation is self.conversation:
                self._update_status(
                    ctx_used=stats.prompt_tokens + stats.generated_tokens,
                    tokens_per_s=stats.tokens_per_s or None,
                    ttft_s=stats.ttft_s,
                )
        if self.turn is turn:
            self.turn = None
        self._update_status()
        self.refresh_bindings()
        self._archive_old_answers()

    @work(group="archive")
    async def _archive_old_answers(self) -> None:
        answers = list(self._chat_screen().query(AssistantMessage))
        for widget in answers[:-LIVE_ANSWERS]:
            await widget.archive()

    def action_stop(self) -> None:
        if self.turn is not None:
            self.turn.stop.set()
            self._update_status()
            self.refresh_bindings()

    async def action_quit(self) -> None:
        if self.turn is not None:
            self.turn.stop.set()
        self.exit()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            # The workers catch what they expect; this is the last line of defence.
            self.error(_as_error(event.worker.error, "internal error"))

    def close_engine(self, timeout: float = 30.0) -> None:
        """Free the model (after the app has exited and the workers have stopped)."""
        if self._engine_lock.acquire(timeout=timeout):
            try:
                if self.session is not None:
                    self.session.engine.close()
                    self.session = None
            finally:
                self._engine_lock.release()

    # -- settings ---------------------------------------------------------------------------

    def _settings_record(self) -> dict[str, Any]:
        """What a resumed conversation needs to continue as it was."""
        from localllm.profiles import load_profile

        try:
            base: Profile | None = load_profile(self.profile.name)
        except ProfileError:
            base = None
        sampling = {}
        for key in SAMPLING_FIELDS:
            value = getattr(self.profile, key)
            if base is None or getattr(base, key) != value:
                sampling[key] = list(value) if isinstance(value, tuple) else value
        return {
            "model": self.model_name,
            "model_path": str(self.model_path) if self.model_path else None,
            "profile": self.profile.name,
            "mode": self.profile.mode,
            "system_prompt": self.profile.system_prompt,
            "sampling": sampling,
        }

    def apply_profile(self, profile: Profile, *, announce: str | None = None) -> None:
        """Use ``profile`` from the next request on (reloading the model when its load
        settings, such as the context length, changed)."""
        self.profile = profile
        self._update_status()
        if announce:
            self.notify(announce, title="Profile")
        loaded = self._loaded_profile
        if (
            self.model_path is not None
            and loaded is not None
            and any(getattr(loaded, k) != getattr(profile, k) for k in LOAD_FIELDS)
        ):
            self.notify("reloading the model for the new load settings", title="Model")
            self.load_model(self.model_path, self.model_name)

    def use_profile(self, name: str) -> bool:
        from localllm.profiles import load_profile

        try:
            profile = load_profile(name)
        except ProfileError as exc:
            self.error(exc, "Profile")
            return False
        if self.profile.system_prompt and not profile.system_prompt:
            # A system prompt set in this chat stays until changed.
            profile = dc_replace(profile, system_prompt=self.profile.system_prompt)
        self.apply_profile(profile, announce=f"using profile {name} ({profile.mode})")
        return True

    def set_mode(self, mode: str | None = None) -> None:
        if mode is None:
            mode = "reasoning" if self.profile.mode != "reasoning" else "instant"
        if mode not in MODES:
            self.notify(f"unknown mode '{mode}': use {' or '.join(MODES)}", severity="error")
            return
        self.profile = dc_replace(self.profile, mode=mode)
        self._update_status()
        self.notify(f"mode: {mode}", title="Mode")

    def set_system_prompt(self, text: str) -> None:
        self.profile = dc_replace(self.profile, system_prompt=text or None)
        self.notify("system prompt set" if text else "system prompt cleared", title="System")

    # -- actions and screens -----------------------------------------------------------------

    def action_help(self) -> None:
        from localllm.tui.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    def action_models(self) -> None:
        from localllm import store
        from localllm.tui.screens.models import ModelEntry, ModelPicker

        entries = [
            ModelEntry(m.name, m.primary, m.size or None, m.quant) for m in store.installed()
        ]
        current = self.model_path
        if current is not None and all(e.path.resolve() != current.resolve() for e in entries):
            size = current.stat().st_size if current.is_file() else None
            entries.insert(0, ModelEntry(str(current), current, size, self._quant(current)))
        self.push_screen(ModelPicker(entries, current, can_pull=self._can_pull()), self._picked)

    @staticmethod
    def _can_pull() -> bool:
        try:
            from localllm import hub

            return hasattr(hub, "plan_pull") and hasattr(hub, "pull")
        except ImportError:
            return False

    def _picked(self, choice: Any) -> None:
        if choice is None:
            return
        if choice.action == "pull":
            self.pull_model(choice.ref)
        elif choice.path is not None:
            if self.model_path is not None and choice.path.resolve() == self.model_path.resolve():
                self.notify(f"{choice.ref} is already loaded")
                return
            self.load_model(choice.path, choice.ref)

    def action_profiles(self) -> None:
        from localllm.profiles import available_profiles
        from localllm.tui.screens.profiles import ProfilePicker

        def picked(name: str | None) -> None:
            if name:
                self.use_profile(name)

        self.push_screen(ProfilePicker(available_profiles(), self.profile.name), picked)

    def action_sampling(self) -> None:
        from localllm.tui.screens.profiles import ProfileEditor

        def edited(profile: Profile | None) -> None:
            if profile is not None:
                self.apply_profile(profile, announce="sampling values applied")

        self.push_screen(ProfileEditor(self.profile), edited)

    def action_toggle_mode(self) -> None:
        self.set_mode()

    def action_system_prompt(self) -> None:
        from localllm.tui.screens.system import SystemPromptEditor

        def edited(text: str | None) -> None:
            if text is not None:
                self.set_system_prompt(text)

        self.push_screen(SystemPromptEditor(self.profile.system_prompt or ""), edited)

    async def action_new_chat(self) -> None:
        await self.new_chat()

    async def new_chat(self) -> None:
        if self.turn is not None:
            self.turn.stop.set()
        self.conversation = Conversation.new()
        self.history = []
        await self.chat_log.remove_children()
        self._update_status(tokens_per_s=None, ttft_s=None)
        self.count_context()
        self.prompt.focus()

    def action_conversations(self) -> None:
        from localllm.tui.screens.conversations import ConversationList

        def picked(conversation_id: str | None) -> None:
            if conversation_id:
                self.resume(conversation_id)

        self.push_screen(ConversationList(self.conversation.id), picked)

    def on_conversation_list_renamed(self, message: Any) -> None:
        if message.conversation_id == self.conversation.id:
            self.conversation.title = message.title

    async def on_conversation_list_deleted(self, message: Any) -> None:
        if message.conversation_id == self.conversation.id:
            await self.new_chat()

    # -- resuming --------------------------------------------------------------------------

    @work(exclusive=True, group="resume")
    async def resume(
        self, conversation_id: str, fallback: tuple[Path, str | None] | None = None
    ) -> None:
        """Show a saved conversation and continue it with its model and profile."""
        try:
            conversation = conversations.load(conversation_id)
        except LocalLLMError as exc:
            self.error(exc, "Resume")
            if fallback is not None and self.model_path is None:
                self.load_model(*fallback)
            return
        if self.turn is not None:
            self.turn.stop.set()
        self.conversation = conversation
        self.history = conversation.history()
        log = self.chat_log
        await log.remove_children()
        widgets = []
        answers = sum(1 for m in conversation.messages if m.get("role") == "assistant")
        for message in conversation.messages:
            if message.get("role") == "user":
                widgets.append(UserMessage(message["content"]))
                self.prompt.remember(message["content"])
            elif message.get("role") == "assistant":
                widgets.append(
                    AssistantMessage(
                        message["content"],
                        message.get("reasoning") or "",
                        note="stopped" if message.get("stopped") else "",
                        show_reasoning=self.profile.show_reasoning,
                        expand_reasoning=self.expand_reasoning,
                        archived=answers > LIVE_ANSWERS,
                    )
                )
                answers -= 1
        if widgets:
            await log.mount_all(widgets)
        log.scroll_end(animate=False)
        self._update_status(ctx_used=None, tokens_per_s=None, ttft_s=None)
        self._restore_settings(conversation, fallback)
        self.count_context()

    def _restore_settings(
        self, conversation: Conversation, fallback: tuple[Path, str | None] | None
    ) -> None:
        from localllm.profiles import load_profile, profile_to_dict, validate_dict

        settings = conversation.settings
        name = settings.get("profile")
        if isinstance(name, str) and name:
            try:
                data = profile_to_dict(load_profile(name))
                sampling = settings.get("sampling")
                if isinstance(sampling, dict):
                    data.update({k: v for k, v in sampling.items() if k in SAMPLING_FIELDS})
                for key in ("mode", "system_prompt"):
                    if key in settings:
                        data[key] = settings[key]
                profile = validate_dict(data, source=f"conversation {conversation.id}")
            except ProfileError as exc:
                self.notify(
                    f"profile '{name}' is not available ({exc.message}); keeping "
                    f"{self.profile.name}",
                    severity="warning",
                )
            else:
                self.profile = profile
        self._update_status()
        path = self._conversation_model(settings)
        if path is None:
            if settings.get("model"):
                self.notify(
                    f"model '{settings['model']}' is not available; continuing with "
                    f"{self.model_name or 'no model'}",
                    severity="warning",
                )
            if self.model_path is None and fallback is not None:
                self.load_model(*fallback)
            elif self.model_path is not None and self._loaded_profile is not None:
                self.apply_profile(self.profile)  # reloads if the load settings differ
            return
        if self.model_path is not None and self.model_path.resolve() == path.resolve():
            self.apply_profile(self.profile)
            return
        self.load_model(path, settings.get("model") or None)

    @staticmethod
    def _conversation_model(settings: dict[str, Any]) -> Path | None:
        from localllm import store

        stored = settings.get("model_path")
        if isinstance(stored, str) and stored and Path(stored).is_file():
            return Path(stored)
        name = settings.get("model")
        if isinstance(name, str) and name:
            try:
                return store.resolve_model(name)
            except LocalLLMError:
                return None
        return None

    # -- downloads ---------------------------------------------------------------------------

    def pull_model(self, ref: str) -> None:
        if not self._can_pull():
            self.notify("pulling models is not available in this build", severity="error")
            return
        if self.downloading:
            self.notify(f"already downloading {self.downloading}", severity="warning")
            return
        self.downloading = ref
        self.post_message(self.DownloadProgress(ref, 0, None))
        self._pull_worker(ref)

    @work(thread=True, exclusive=True, group="download", exit_on_error=False)
    def _pull_worker(self, ref: str) -> None:
        from localllm import hub

        worker = get_current_worker()

        class _Aborted(Exception):
            pass

        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            if worker.is_cancelled:
                raise _Aborted
            now = time.monotonic()
            if now - last[0] >= 0.2 or (total is not None and done >= total):
                last[0] = now
                self.post_message(self.DownloadProgress(ref, done, total))

        try:
            plan = hub.plan_pull(ref)
            manifest = hub.pull(plan, progress=progress)
        except _Aborted:
            return
        except Exception as exc:
            self.post_message(
                self.DownloadFinished(ref, None, None, _as_error(exc, "download failed"))
            )
            return
        self.post_message(self.DownloadFinished(ref, manifest.name, manifest.primary))

    def on_chat_app_download_progress(self, message: DownloadProgress) -> None:
        from textual.widgets import Label, ProgressBar

        screen = self._chat_screen()
        screen.query_one("#download").display = True
        screen.query_one("#download-label", Label).update(f"pulling {message.ref} ")
        bar = screen.query_one("#download-bar", ProgressBar)
        bar.update(total=message.total, progress=message.done)

    def on_chat_app_download_finished(self, message: DownloadFinished) -> None:
        self.downloading = None
        self._chat_screen().query_one("#download").display = False
        if message.error is not None or message.path is None:
            self.error(message.error or InferenceError("download failed"), "Pull failed")
            return
        self.notify(f"pulled {message.name}", title="Model")
        self.load_model(message.path, message.name)

    # -- slash commands --------------------------------------------------------------------

    async def run_command(self, line: str) -> None:
        command, _, arg = line.partition(" ")
        command = command.lower()
        arg = arg.strip()
        if command in ("/quit", "/exit", "/q"):
            await self.action_quit()
        elif command in ("/help", "/?"):
            self.action_help()
        elif command == "/model":
            if not arg:
                self.action_models()
            else:
                self._load_by_ref(arg)
        elif command == "/pull":
            if arg:
                self.pull_model(arg)
            else:
                self.notify("usage: /pull owner/repo[:QUANT]", severity="warning")
        elif command == "/profile":
            if arg:
                self.use_profile(arg)
            else:
                self.action_profiles()
        elif command in ("/sampling", "/edit"):
            self.action_sampling()
        elif command == "/mode":
            self.set_mode(arg or None)
        elif command == "/system":
            if arg:
                self.set_system_prompt("" if arg in ("-", "none", "off") else arg)
            else:
                self.action_system_prompt()
        elif command in ("/new", "/clear"):
            await self.new_chat()
        elif command in ("/chats", "/conversations", "/history"):
            self.action_conversations()
        elif command == "/rename":
            if not arg:
                self.notify("usage: /rename TITLE", severity="warning")
                return
            try:
                self.conversation.rename(arg)
            except LocalLLMError as exc:
                self.error(exc, "Rename")
            else:
                self.notify(f"renamed to “{arg}”")
        elif command == "/export":
            self._export(arg or None)
        else:
            self.notify(
                f"unknown command {command}: /help lists them (start with // to send a '/')",
                severity="error",
            )

    def _load_by_ref(self, ref: str) -> None:
        from localllm import store

        try:
            path = store.resolve_model(ref)
        except LocalLLMError as exc:
            self.error(exc, "Model")
            return
        self.load_model(path)

    def _export(self, dest: str | None) -> None:
        if not self.conversation.messages:
            self.notify("nothing to export yet", severity="warning")
            return
        try:
            path = conversations.export_markdown(self.conversation, dest)
        except LocalLLMError as exc:
            self.error(exc, "Export")
            return
        self.notify(f"wrote {path}", title="Exported")


def run_chat(
    model: Path | None,
    profile: Profile,
    *,
    model_name: str | None = None,
    resume: str | None = None,
    expand_reasoning: bool = False,
) -> int:
    """Run the chat app in this terminal; returns the exit code."""
    app = ChatApp(
        model, profile, model_name=model_name, resume=resume, expand_reasoning=expand_reasoning
    )
    try:
        app.run()
    finally:
        app.close_engine()
    return app.return_code or 0
