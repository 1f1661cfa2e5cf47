"""The chat app: key bindings, screens, and the wiring between the parts that do the work.

* :class:`~localllm.tui.state.ChatState`: what the chat is doing (profile, model, conversation,
  the request in flight), as plain data;
* :class:`~localllm.tui.engine_host.EngineHost`: the one owner of the model; loads, counts and
  generates in thread workers, one at a time, and posts :mod:`localllm.tui.messages` back;
* :mod:`localllm.streaming` (core, no UI): one turn's events batched into screen-sized deltas;
* :mod:`localllm.tui.commands`: the slash commands, read by :meth:`ChatApp.run_command` and the
  help screen;
* the widgets draw: ``AssistantMessage`` streams an answer, ``DownloadBar`` pulls a model.

Threads: the UI runs on Textual's event loop; blocking work runs in workers that never touch
widgets (they post messages, which is thread-safe).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.worker import Worker, WorkerState

from localllm import conversations
from localllm.conversations import Conversation
from localllm.errors import (
    EngineCrashed,
    InferenceError,
    LocalLLMError,
    ProfileError,
    UsageError,
)
from localllm.profiles import MODES, Profile
from localllm.streaming import Delta
from localllm.textin import clean_text
from localllm.tui import commands
from localllm.tui.engine_host import EngineFactory, EngineHost, as_error
from localllm.tui.messages import ContextCounted, ModelFailed, ModelLoaded, TurnFinished
from localllm.tui.screens.chat import ChatScreen
from localllm.tui.state import (
    Attachment,
    ChatState,
    Turn,
    model_from_settings,
    profile_from_settings,
    read_attachment,
    restore_images,
)
from localllm.tui.widgets.download import DownloadBar, can_pull
from localllm.tui.widgets.messages import AssistantMessage, ChatLog, UserMessage
from localllm.tui.widgets.prompt import PromptInput
from localllm.tui.widgets.status import StatusBar

LIVE_ANSWERS = 2  # answers kept as live Markdown widgets; older ones are archived


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
        # Priority: the prompt (a TextArea) would take Ctrl+A as "line start".
        Binding("ctrl+a", "attach", "Image", show=False, priority=True),
    ]

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
        self.state = ChatState(profile)
        self.host = EngineHost(self, engine_factory)
        self._initial_model = (Path(model), model_name) if model is not None else None
        self._resume = resume
        self.expand_reasoning = expand_reasoning
        self.timings = timings
        self.constraint: Any = None  # the profile's structured.Constraint, built once per change
        self._constraint_key: tuple[str | None, str | None] = (None, None)

    async def on_mount(self) -> None:
        await self.push_screen(ChatScreen(timings=self.timings))
        self._update_status()
        self._refresh_constraint()
        if self._resume:
            self.resume(self._resume, fallback=self._initial_model)
        elif self._initial_model is not None:
            self.load_model(*self._initial_model)

    # -- small helpers ---------------------------------------------------------------------

    @property
    def profile(self) -> Profile:
        return self.state.profile

    @profile.setter
    def profile(self, profile: Profile) -> None:
        self.state.profile = profile
        self._refresh_constraint()

    def _refresh_constraint(self) -> None:
        """Build the answer's constraint from the profile's ``json_schema`` or ``grammar`` when
        they changed (not per request: converting a schema costs). One that cannot be built is
        shown as a notification and the answers stay free."""
        import json

        profile = self.profile
        schema = profile.json_schema
        key = (None if schema is None else json.dumps(schema, sort_keys=True), profile.grammar)
        if key == self._constraint_key:
            return
        self._constraint_key = key
        self.constraint = None
        if key == (None, None):
            return
        from localllm.session import make_constraint

        try:
            self.constraint = make_constraint(
                json_schema=schema, grammar=profile.grammar, source=f"profile {profile.name}"
            )
        except LocalLLMError as exc:
            self.error(exc, "Profile not applied to answers")
        except Exception as exc:  # a schema the converter cannot handle
            self.error(
                UsageError(
                    f"profile {profile.name}: the answer constraint cannot be built: {exc}",
                    hint="fix its json_schema or grammar; answers are unconstrained meanwhile",
                ),
                "Profile not applied to answers",
            )

    @property
    def session(self) -> Any:
        """The loaded model's ChatSession (for tests and the bench: the workers own it)."""
        return self.host.session

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
    def download_bar(self) -> DownloadBar:
        return self._chat_screen().query_one(DownloadBar)

    def _update_status(self, **changes: Any) -> None:
        try:
            bar = self._chat_screen().query_one(StatusBar)
        except (LookupError, NoMatches):
            return
        state = self.state
        bar.set(
            profile=state.profile.name, mode=state.profile.mode, activity=state.activity, **changes
        )

    def error(self, exc: LocalLLMError, title: str = "Error") -> None:
        """Show a core error as a notification (message and hint)."""
        message = exc.message + (f"\n{exc.hint}" if exc.hint else "")
        self.notify(message, title=title, severity="error", timeout=8)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Asked when the key is pressed. The stop binding is not in the footer, so the footer
        # is never refreshed for it (a footer refresh rebuilds it: a costly frame).
        if action == "stop":
            return self.state.busy  # otherwise Esc and Ctrl+C keep their usual meaning
        if action == "attach":
            return isinstance(self.screen, ChatScreen)  # dialogs keep their own Ctrl+A
        return True

    # -- model loading ---------------------------------------------------------------------

    def load_model(self, path: Path, name: str | None = None) -> None:
        """Load ``path`` in the background (the chat stays usable, sending waits)."""
        name = name or self._display_name(path)
        self.state.stop()
        self.state.loading = name
        self._update_status()
        self.host.load(Path(path), name, self.profile)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        state = self.state
        switched = state.model_path is not None and state.model_path != message.path
        state.loading = None
        state.model_path = message.path
        state.model_name = message.name
        state.loaded_profile = message.profile
        state.vision = message.vision
        engine = message.engine
        self._update_status(
            model=message.name,
            quant=self._quant(message.path),
            ctx_total=getattr(engine, "n_ctx", None),
            ctx_used=None,
            backend=" ".join(x for x in (message.backend, _split_label(engine)) if x),
        )
        self.count_context()
        if switched:
            self.notify(f"loaded {message.name}", title="Model")
        if message.projector_error is not None:
            self.error(message.projector_error, "Images off: text only")
        elif state.attachments and not message.vision:
            self.notify(
                f"{message.name} is a text-only model: the attached images cannot be sent",
                severity="warning",
            )
        if not getattr(engine, "is_chat_model", True):
            self.notify(
                "this is a base model (no chat template): it continues the text",
                title="Note",
                severity="warning",
            )

    def on_model_failed(self, message: ModelFailed) -> None:
        from localllm.tui.screens.dialogs import ErrorDialog

        state = self.state
        state.loading = state.model_path = state.model_name = None
        state.vision = False
        self._update_status(model=None, quant=None, ctx_total=None, ctx_used=None, backend=None)
        self.push_screen(
            ErrorDialog(
                f"Could not load {message.name}",
                message.error.message,
                (message.error.hint or "") + " · Ctrl+O picks another model",
            )
        )

    def count_context(self) -> None:
        """Show how much of the context the conversation fills (counted in the background)."""
        state = self.state
        if not state.history:
            self._update_status(ctx_used=0 if state.model_path else None)
            return
        if state.model_path is not None and not state.loading:
            self.host.count(state.history, state.profile, state.conversation.id)

    def on_context_counted(self, message: ContextCounted) -> None:
        if message.conversation_id == self.state.conversation.id and self.state.turn is None:
            self._update_status(ctx_used=message.tokens)

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
        if commands.is_command(text):
            await self.run_command(text)
            return
        if text.strip().startswith("//"):
            text = text.replace("/", "", 1)
        await self.send_prompt(text)

    async def send_prompt(self, text: str) -> bool:
        """Start answering ``text``; False (with a notification) when that cannot happen now."""
        state = self.state
        refusal = None
        if state.busy:
            refusal = "still answering: Esc stops it"
        elif state.loading:
            refusal = f"{state.loading} is still loading"
        elif state.model_path is None:
            refusal = "no model is loaded: Ctrl+O picks one"
        elif state.attachments and not state.vision:
            self.notify(
                f"{state.model_name} is a text-only model: it cannot read images\n"
                "use a vision model (one with an mmproj-*.gguf projector beside it), "
                "or /image clear to send the text alone",
                title="Text-only model",
                severity="error",
                timeout=10,
            )
            self.prompt.load_text(text)
            return False
        if refusal:
            self.notify(refusal, severity="warning")
            self.prompt.load_text(text)
            return False
        text = self._clean(text, "the prompt")
        attached, state.attachments = state.attachments, []
        self._show_attachments()
        log = self.chat_log
        constraint = self.constraint
        widget = AssistantMessage(
            streaming=True,
            show_reasoning=self.profile.show_reasoning,
            expand_reasoning=self.expand_reasoning,
            code="json" if constraint is not None and constraint.is_json else None,
        )
        await log.mount_all([UserMessage(text, [a.label() for a in attached]), widget])
        log.scroll_end(animate=False)
        try:
            state.conversation.set_settings(**state.settings_record())
            state.conversation.add_message(
                "user", text, images=[a.record() for a in attached] or None
            )
        except LocalLLMError as exc:
            self.error(exc, "Not saved")
        turn = Turn(
            text,
            widget,
            self.profile,
            list(state.history),
            state.conversation,
            images=[a.image for a in attached],
            constraint=constraint,
        )
        state.turn = turn
        state.turns.add(turn)
        self._update_status()

        def emit(delta: Delta) -> None:  # called in the worker thread: posting is safe
            widget.post_message(
                AssistantMessage.Delta(delta.answer, delta.reasoning, delta.reasoning_tokens)
            )

        # Generation starts once the new widgets are laid out and drawn: on a small machine
        # that frame would otherwise take the CPU from llama.cpp's threads in the first tokens.
        self.call_after_refresh(self.host.generate, turn, emit)
        return True

    def on_turn_finished(self, message: TurnFinished) -> None:
        turn, result = message.turn, message.result
        state = self.state
        state.turns.discard(turn)
        # Its last Delta is already in the widget's queue: Finished lands after it.
        turn.widget.post_message(AssistantMessage.Finished(result))
        current = turn.conversation is state.conversation
        if result.error is not None:
            error = result.error
            if isinstance(error, UsageError) and "context" in error.message:
                error = UsageError(
                    error.message,
                    hint="start a new chat (Ctrl+N), or use a profile with a larger context_length",
                )
            crashed = isinstance(error, EngineCrashed)  # the next message loads it again
            self.error(error, "The model's process died" if crashed else "The answer failed")
        else:
            if result.history is not None and current:
                state.history = result.history
            stats = result.stats
            try:
                turn.conversation.add_message(
                    "assistant",
                    result.answer,
                    reasoning=result.reasoning or None,
                    stopped=True if result.stopped else None,
                    mode=result.mode or turn.profile.mode,
                    stats=stats.as_dict() if hasattr(stats, "as_dict") else None,
                )
            except LocalLLMError as exc:
                self.error(exc, "Not saved")
            if stats is not None and current:
                self._update_status(
                    ctx_used=stats.prompt_tokens + stats.generated_tokens,
                    tokens_per_s=stats.tokens_per_s or None,
                    ttft_s=stats.ttft_s,
                )
        if state.turn is turn:
            state.turn = None
        self._update_status()
        self._archive_old_answers()

    @work(group="archive")
    async def _archive_old_answers(self) -> None:
        answers = list(self._chat_screen().query(AssistantMessage))
        for widget in answers[:-LIVE_ANSWERS]:
            await widget.archive()

    def action_stop(self) -> None:
        if self.state.turn is not None:
            self.state.stop()
            self._update_status()

    async def action_quit(self) -> None:
        self.state.stop()
        self.exit()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            # The workers catch what they expect; this is the last line of defence.
            self.error(as_error(event.worker.error, "internal error"))

    def close_engine(self, timeout: float = 30.0) -> None:
        """Free the model (after the app has exited and the workers have stopped)."""
        self.host.close(timeout)

    # -- settings ---------------------------------------------------------------------------

    def apply_profile(self, profile: Profile, *, announce: str | None = None) -> None:
        """Use ``profile`` from the next request on (reloading the model when its load
        settings, such as the context length, changed)."""
        self.profile = profile
        self._update_status()
        if announce:
            self.notify(announce, title="Profile")
        state = self.state
        if state.needs_reload(profile) and state.model_path is not None:
            self.notify("reloading the model for the new load settings", title="Model")
            self.load_model(state.model_path, state.model_name)

    def use_profile(self, name: str) -> bool:
        from localllm.profiles import load_profile

        try:
            profile = load_profile(name)
        except ProfileError as exc:
            self.error(exc, "Profile")
            return False
        if self.profile.system_prompt and not profile.system_prompt:
            # A system prompt set in this chat stays until changed.
            profile = profile.replace(system_prompt=self.profile.system_prompt)
        self.apply_profile(profile, announce=f"using profile {name} ({profile.mode})")
        return True

    def set_mode(self, mode: str | None = None) -> None:
        if mode is None:
            mode = "reasoning" if self.profile.mode != "reasoning" else "instant"
        if mode not in MODES:
            self.notify(f"unknown mode '{mode}': use {' or '.join(MODES)}", severity="error")
            return
        self.profile = self.profile.replace(mode=mode)
        self._update_status()
        self.notify(f"mode: {mode}", title="Mode")

    def _clean(self, text: str, what: str) -> str:
        """``text`` by the rule of every text input (localllm.textin): what cannot be UTF-8 (a
        lone surrogate from a paste) becomes U+FFFD, with a warning, instead of failing in the
        tokenizer or the conversation file."""
        cleaned, replaced = clean_text(text)
        if replaced:
            self.notify(
                f"{what} is not valid UTF-8: invalid characters were replaced by \ufffd",
                severity="warning",
            )
        return cleaned

    def set_system_prompt(self, text: str) -> None:
        text = self._clean(text, "the system prompt")
        self.profile = self.profile.replace(system_prompt=text or None)
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
        entries += self._foreign_entries({e.path.resolve() for e in entries})
        current = self.state.model_path
        if current is not None and all(e.path.resolve() != current.resolve() for e in entries):
            size = current.stat().st_size if current.is_file() else None
            entries.insert(0, ModelEntry(str(current), current, size, self._quant(current)))
        self.push_screen(ModelPicker(entries, current, can_pull=can_pull()), self._picked)

    @staticmethod
    def _foreign_entries(seen: set[Path]) -> list[Any]:
        """Rows for the models in Ollama's, LM Studio's and llama.cpp's stores (loaded in
        place), named by their references; files already listed as installed are left out."""
        from localllm import foreign
        from localllm.tui.screens.models import ModelEntry

        models = [m for scan in foreign.scan() for m in scan.usable()]
        facts = foreign.describe(models)  # header facts, cached by file version
        rows = []
        for m in models:
            if m.primary.resolve() in seen:
                continue
            seen.add(m.primary.resolve())
            quant = m.quant or facts.get(m.ref, {}).get("quant")
            rows.append(ModelEntry(m.ref, m.primary, m.size or None, quant, m.label))
        return rows

    async def _picked(self, choice: Any) -> None:
        if choice is None:
            return
        if choice.action == "pull":
            await self.pull_model(choice.ref)
        elif choice.path is not None:
            current = self.state.model_path
            if current is not None and choice.path.resolve() == current.resolve():
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

    def action_attach(self) -> None:
        from localllm.tui.screens.images import ImagePicker

        def picked(path: Path | None) -> None:
            if path is not None:
                self.attach(str(path))

        self.push_screen(ImagePicker(Path.cwd()), picked)

    def attach(self, ref: str) -> Attachment | None:
        """Attach the image at ``ref`` to the next message (a notification if it cannot be)."""
        try:
            attachment = read_attachment(ref)
        except LocalLLMError as exc:
            self.error(exc, "Image")
            return None
        self.state.attachments.append(attachment)
        self._show_attachments()
        if self.state.model_path is not None and not self.state.loading and not self.state.vision:
            self.notify(
                f"attached {attachment.label()}, but {self.state.model_name} is a text-only "
                "model: load a vision model to send it",
                severity="warning",
            )
        return attachment

    def _show_attachments(self) -> None:
        from rich.text import Text
        from textual.widgets import Static

        try:
            bar = self._chat_screen().query_one("#attachments", Static)
        except (LookupError, NoMatches):
            return
        attached = self.state.attachments
        labels = " · ".join(a.label() for a in attached)
        text = f"[image] {labels}  (/image clear removes)" if attached else ""
        bar.update(Text(text))  # plain text: a file name may hold markup brackets
        bar.set_class(bool(attached), "-shown")

    async def action_new_chat(self) -> None:
        await self.new_chat()

    async def new_chat(self) -> None:
        self.state.new_conversation()
        await self.chat_log.remove_children()
        self._update_status(tokens_per_s=None, ttft_s=None)
        self._show_attachments()
        self.count_context()
        self.prompt.focus()

    def action_conversations(self) -> None:
        from localllm.tui.screens.conversations import ConversationList

        def picked(conversation_id: str | None) -> None:
            if conversation_id:
                self.resume(conversation_id)

        self.push_screen(ConversationList(self.state.conversation.id), picked)

    def on_conversation_list_renamed(self, message: Any) -> None:
        if message.conversation_id == self.state.conversation.id:
            self.state.conversation.title = message.title

    async def on_conversation_list_deleted(self, message: Any) -> None:
        if message.conversation_id == self.state.conversation.id:
            await self.new_chat()

    # -- resuming --------------------------------------------------------------------------

    @work(exclusive=True, group="resume")
    async def resume(
        self, conversation_id: str, fallback: tuple[Path, str | None] | None = None
    ) -> None:
        """Show a saved conversation and continue it with its model and profile."""
        state = self.state
        try:
            conversation = conversations.load(conversation_id)
        except LocalLLMError as exc:
            self.error(exc, "Resume")
            if fallback is not None and state.model_path is None:
                self.load_model(*fallback)
            return
        from localllm.vision import MARKER

        state.stop()
        state.conversation = conversation
        state.history, gone = restore_images(conversation.history(), MARKER)
        for warning in gone:
            self.notify(f"image {warning}", title="Resume", severity="warning", timeout=10)
        log = self.chat_log
        await log.remove_children()
        widgets = []
        answers = sum(1 for m in conversation.messages if m.get("role") == "assistant")
        for message in conversation.messages:
            if message.get("role") == "user":
                labels = [str(i.get("label") or i.get("name")) for i in message.get("images") or ()]
                widgets.append(UserMessage(message["content"], labels))
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
        state = self.state
        settings = conversation.settings
        try:
            profile = profile_from_settings(settings, f"conversation {conversation.id}")
        except ProfileError as exc:
            self.notify(
                f"profile '{settings.get('profile')}' is not available ({exc.message}); "
                f"keeping {self.profile.name}",
                severity="warning",
            )
        else:
            if profile is not None:
                self.profile = profile
        self._update_status()
        path = model_from_settings(settings)
        if path is None:
            if settings.get("model"):
                self.notify(
                    f"model '{settings['model']}' is not available; continuing with "
                    f"{state.model_name or 'no model'}",
                    severity="warning",
                )
            if state.model_path is None and fallback is not None:
                self.load_model(*fallback)
            elif state.model_path is not None and state.loaded_profile is not None:
                self.apply_profile(self.profile)  # reloads if the load settings differ
            return
        if state.model_path is not None and state.model_path.resolve() == path.resolve():
            self.apply_profile(self.profile)
            return
        self.load_model(path, settings.get("model") or None)

    # -- downloads ---------------------------------------------------------------------------

    async def pull_model(self, ref: str) -> None:
        if not can_pull():
            self.notify("pulling models is not available in this build", severity="error")
            return
        bar = self.download_bar
        if bar.ref:
            self.notify(f"already downloading {bar.ref}", severity="warning")
            return
        await bar.pull(ref)

    def on_download_bar_finished(self, message: DownloadBar.Finished) -> None:
        if message.error is not None or message.path is None:
            self.error(message.error or InferenceError("download failed"), "Pull failed")
            return
        self.notify(f"pulled {message.name}", title="Model")
        self.load_model(message.path, message.name)

    # -- slash commands (the registry: localllm.tui.commands) ------------------------------

    async def run_command(self, line: str) -> None:
        command, word, arg = commands.parse(line)
        if command is None:
            self.notify(
                f"unknown command {word}: /help lists them (start with // to send a '/')",
                severity="error",
            )
            return
        outcome = getattr(self, command.handler)(arg)
        if inspect.isawaitable(outcome):
            await outcome

    async def command_quit(self, arg: str) -> None:
        await self.action_quit()

    def command_help(self, arg: str) -> None:
        self.action_help()

    def command_model(self, arg: str) -> None:
        if not arg:
            self.action_models()
            return
        from localllm import refs, store

        try:
            path = store.resolve_model(arg)
        except LocalLLMError as exc:
            self.error(exc, "Model")
            return
        # Another tool's blob has no useful file name: show the reference instead.
        self.load_model(path, arg if refs.foreign_ref(arg) else None)

    async def command_pull(self, arg: str) -> None:
        if arg:
            await self.pull_model(arg)
        else:
            self.notify("usage: /pull owner/repo[:QUANT]", severity="warning")

    def command_profile(self, arg: str) -> None:
        if arg:
            self.use_profile(arg)
        else:
            self.action_profiles()

    def command_sampling(self, arg: str) -> None:
        self.action_sampling()

    def command_mode(self, arg: str) -> None:
        self.set_mode(arg or None)

    def command_system(self, arg: str) -> None:
        if arg:
            self.set_system_prompt("" if arg in ("-", "none", "off") else arg)
        else:
            self.action_system_prompt()

    def command_image(self, arg: str) -> None:
        if not arg:
            self.action_attach()
        elif arg in ("clear", "-", "none"):
            self.state.attachments = []
            self._show_attachments()
            self.notify("attachments removed", title="Image")
        else:
            attachment = self.attach(arg)
            if attachment is not None:
                self.notify(f"attached {attachment.label()}", title="Image")

    async def command_new(self, arg: str) -> None:
        await self.new_chat()

    def command_chats(self, arg: str) -> None:
        self.action_conversations()

    def command_rename(self, arg: str) -> None:
        if not arg:
            self.notify("usage: /rename TITLE", severity="warning")
            return
        try:
            self.state.conversation.rename(self._clean(arg, "the title"))
        except LocalLLMError as exc:
            self.error(exc, "Rename")
        else:
            self.notify(f"renamed to “{arg}”")

    def command_export(self, arg: str) -> None:
        conversation = self.state.conversation
        if not conversation.messages:
            self.notify("nothing to export yet", severity="warning")
            return
        try:
            path = conversations.export_markdown(conversation, arg or None)
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
    from localllm.tui.terminal import tolerate_invalid_input

    tolerate_invalid_input()
    app = ChatApp(
        model, profile, model_name=model_name, resume=resume, expand_reasoning=expand_reasoning
    )
    try:
        app.run()
    finally:
        app.close_engine()
    return app.return_code or 0


def _split_label(engine: object) -> str:
    """``split 11+10+10`` when the model is split across RPC workers (layers per device)."""
    try:
        from localllm.rpc import status_label

        return status_label(engine)
    except Exception:  # a label must never break the app
        return ""
