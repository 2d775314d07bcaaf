"""Multi-turn conversations, one per model name.

>>> h = ChatHistory()
>>> h.prompt("demo", "Hi!", system="Be brief.")[-1]
ChatMessage(role='user', content='Hi!')
>>> h.record("demo", "Hi!", "Hello.")
>>> len(h.messages("demo"))
2

``prompt`` builds the messages for the next turn without changing anything;
``record`` stores the turn once the answer came back, so a failed or retried turn
leaves the conversation as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol import ChatMessage


@dataclass
class Conversation:
    system: str = ""
    turns: list[ChatMessage] = field(default_factory=list)
    dropped: int = 0  # oldest turns dropped to fit the context (shown with the history)

    def messages(self) -> list[ChatMessage]:
        head = [ChatMessage("system", self.system)] if self.system else []
        return head + list(self.turns)


class ChatHistory:
    """Conversations keyed by runner name."""

    def __init__(self) -> None:
        self._conversations: dict[str, Conversation] = {}

    def names(self) -> list[str]:
        return [n for n, c in self._conversations.items() if c.turns or c.system]

    def messages(self, name: str) -> list[ChatMessage]:
        """All messages so far (system first, if any)."""
        conv = self._conversations.get(name)
        return conv.messages() if conv else []

    def prompt(self, name: str, user: str, system: str | None = None) -> list[ChatMessage]:
        """The messages to send for a new user turn; ``system`` replaces the stored one."""
        conv = self._conversations.get(name, Conversation())
        sys_text = conv.system if system is None else system
        head = [ChatMessage("system", sys_text)] if sys_text else []
        return head + list(conv.turns) + [ChatMessage("user", user)]

    def record(self, name: str, user: str, answer: str, system: str | None = None) -> None:
        """Store a finished turn."""
        conv = self._conversations.setdefault(name, Conversation())
        if system is not None:
            conv.system = system
        conv.turns += [ChatMessage("user", user), ChatMessage("assistant", answer)]

    def begin(self, name: str, messages: list[ChatMessage]) -> bool:
        """Make ``messages`` the conversation (a loaded prompt cache's): a system message, then
        user/assistant turns. False, and nothing changed, for any other shape."""
        system = messages[0].content if messages and messages[0].role == "system" else ""
        turns = messages[1:] if system else list(messages)
        roles = [m.role for m in turns]
        if roles != ["user", "assistant"] * (len(turns) // 2) or not (system or turns):
            return False
        self._conversations[name] = Conversation(system=system, turns=list(turns))
        return True

    def drop_oldest(self, name: str) -> bool:
        """Forget the oldest turn (a user message and its answer); False if none is left."""
        conv = self._conversations.get(name)
        if conv is None or not conv.turns:
            return False
        del conv.turns[:2]
        conv.dropped += 1
        return True

    def dropped(self, name: str) -> int:
        conv = self._conversations.get(name)
        return conv.dropped if conv else 0

    def reset(self, name: str | None = None) -> None:
        """Forget one conversation, or all of them (``name=None``)."""
        if name is None:
            self._conversations.clear()
        else:
            self._conversations.pop(name, None)

    def render(self, name: str) -> str:
        """The conversation as Markdown (also readable as plain text)."""
        msgs = self.messages(name)
        if not msgs:
            return f"(no conversation with {name} yet)"
        text = "\n\n".join(f"**{m.role}:** {m.content}" for m in msgs)
        dropped = self.dropped(name)
        if dropped:
            text = (f"*({dropped} oldest turn{'s' if dropped > 1 else ''} dropped to fit "
                    f"the context)*\n\n{text}")
        return text


_history = ChatHistory()


def get_history() -> ChatHistory:
    """The process-wide conversations."""
    return _history
