"""The user's own bot logic: one hook every adapter asks for the text of its answer.

    # mybot/logic.py                           # config: [adapters.slack] reply = "mybot.logic:answer"
    from chatstate.gateway.reply import Message

    def answer(message: Message) -> str | None:   # or `async def`
        return f"you said {message.text}" if message.text else None

An adapter that received something to answer builds a `Message` (platform-neutral: text, user,
conversation, thread, platform) and calls `respond`. The hook is configured per adapter with
`reply = "module:function"` (or `CHATSTATE_<ID>_REPLY`), or registered in Python with
`register(adapter_id, function)` before the gateway starts; the config key wins. Without either,
the adapter's own stand-in answer (`default`, e.g. Slack's `echo: ...`) is sent.

The hook runs inside the adapter's exactly-once work: the delivery is claimed before the hook
is called and marked done only after the answer is sent, so a gateway killed mid-hook runs it
again after the restart and the user gets one answer. Whatever the hook does, the adapter never
fails the delivery because of it: an exception, a run longer than `reply_timeout_s`, or a value
that is neither a string nor None is logged (`reply_hook_failed`, `reply_hook_timeout`,
`reply_hook_bad_return`) and answered with `APOLOGY`. None or a blank string: no answer.
A plain `def` runs on a thread of its own (it may block, e.g. on an HTTP call); an `async def`
runs on the gateway's loop and must not block it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chatstate.gateway import logs

DEFAULT_TIMEOUT_S = 10.0  # a hook still running after this is answered with APOLOGY
APOLOGY = "Sorry, something went wrong on my side while answering this; please try again later."


@dataclass(frozen=True, slots=True)
class Message:
    """What the user said, the same on every platform.

    `platform` is the id of the adapter that received it ("slack", "teams", ...); `user`,
    `conversation` (channel, room, chat) and `thread` (None outside one) are that platform's ids.
    """

    text: str
    user: str
    conversation: str
    platform: str
    thread: str | None = None


ReplyFunction = Callable[[Message], "str | None | Awaitable[str | None]"]


@dataclass(frozen=True)
class Hook:
    """A reply function bound to one adapter, and how long it may take."""

    function: ReplyFunction
    name: str  # "module:function", for the logs
    timeout_s: float = DEFAULT_TIMEOUT_S


_configured: dict[str, Hook] = {}  # by adapter id, from the config (replaced at each start)
_registered: dict[str, Hook] = {}  # by adapter id, from register()


def register(adapter_id: str, function: ReplyFunction, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Answer `adapter_id`'s messages with `function` (an embedding program calls this before
    `chatstate.gateway.cli.main()`); a `reply` key in that adapter's config wins over it."""
    name = f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', '?')}"
    _registered[adapter_id] = Hook(function, name, timeout_s)


def install(adapter_id: str, hook: Hook | None) -> None:
    """Bind the hook an adapter's config names (`gateway.registry` loads it) before the gateway
    starts that adapter; None: its config names none."""
    if hook is None:
        _configured.pop(adapter_id, None)
    else:
        _configured[adapter_id] = hook


def hooked(adapter_id: str) -> bool:
    """True when `adapter_id` has a hook (an adapter may answer more kinds of message then)."""
    return _hook(adapter_id) is not None


def _hook(adapter_id: str) -> Hook | None:
    return _configured.get(adapter_id) or _registered.get(adapter_id)


async def answer(message: Message, *, default: str | None) -> str | None:
    """The text to send for `message`: the hook's, else `default`; None means send nothing.
    Never raises because of the hook (see the module doc)."""
    hook = _hook(message.platform)
    if hook is None:
        return default
    log = logs.get("reply", adapter=message.platform)
    extra = {"hook": hook.name, "adapter": message.platform}
    try:
        async with asyncio.timeout(hook.timeout_s):
            result: object = await _call(hook.function, message)
    except TimeoutError:
        log.warning("reply_hook_timeout", extra={**extra, "timeout_s": hook.timeout_s})
        return APOLOGY
    except Exception:
        log.exception("reply_hook_failed", extra=extra)
        return APOLOGY
    if result is None or (isinstance(result, str) and not result.strip()):
        return None
    if not isinstance(result, str):
        log.warning("reply_hook_bad_return", extra={**extra, "returned": type(result).__name__})
        return APOLOGY
    return result


async def respond(message: Message, *, default: str | None, send: Callable[[str], Awaitable[object]]) -> bool:
    """`send` the answer to `message` (see `answer`); True if something was sent."""
    text = await answer(message, default=default)
    if text is None:
        return False
    await send(text)
    return True


async def _call(function: ReplyFunction, message: Message) -> object:
    if inspect.iscoroutinefunction(function):
        return await function(message)
    result = await _in_thread(function, message)
    return await result if inspect.isawaitable(result) else result


def _in_thread(function: ReplyFunction, message: Message) -> asyncio.Future[object]:
    """Run a plain function on a daemon thread of its own: one that hangs is given up on at the
    timeout and cannot hold the gateway's exit (a thread pool's workers are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            result, error = function(message), None
        except BaseException as exc:  # handed to the loop, which logs it
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the gateway stopped meanwhile
            pass

    threading.Thread(target=run, name="reply-hook", daemon=True).start()
    return future
