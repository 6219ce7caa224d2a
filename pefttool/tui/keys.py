"""Keys handled one at a time, in order, each by the widget focused when its turn comes.

Textual hands a key to the widget that is focused when the app *reads* the key; a key that
moves the focus (Tab) or opens a screen (Ctrl+S) acts only once it has bubbled back up to a
binding. In a burst — over SSH keys arrive in bursts — the keys after it were already handed
to the old field: `5e-4`, Tab, Tab, End, BackSpace, BackSpace, `8` typed into `train.lr`
left it "5e-48" and emptied the batch size (issue 28.1). `InOrderKeysApp` hands out one key
at a time: a marker follows each key to the widget it went to and bubbles back up behind it;
when the marker is home, the key has been handled all the way up (its binding included) and
the next key goes to whichever widget is focused then. A marker that never comes home (its
widget removed meanwhile) is given up after `KEY_TIMEOUT` seconds, so no key is ever stuck.
"""

from __future__ import annotations

from collections import deque
from functools import partial

from textual import events
from textual.app import App
from textual.message import Message
from textual.timer import Timer


class KeyHandled(Message):
    """The marker sent after a key to the same widget; it bubbles back to the app."""

    def __init__(self, serial: int) -> None:
        super().__init__()
        self.serial = serial


class InOrderKeysApp(App[int]):
    """An app that never hands a key out before the previous one has been handled."""

    KEY_TIMEOUT = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._keys_waiting: deque[events.Key] = deque()
        self._key_in_flight: int | None = None   # the serial of the key being handled
        self._key_serial = 0
        self._key_timer: Timer | None = None

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and not event.is_forwarded:
            self._keys_waiting.append(event)
            if self._key_in_flight is None:
                await self._hand_out_next_key()
            return
        await super().on_event(event)

    async def _hand_out_next_key(self) -> None:
        while self._keys_waiting and self._key_in_flight is None:
            event = self._keys_waiting.popleft()
            target = self.focused or self.screen
            await super().on_event(event)   # a priority binding, or handed to the focused widget
            self._key_serial += 1
            serial = self._key_serial
            if not target.post_message(KeyHandled(serial)):
                continue                    # that widget takes no more messages: go on
            self._key_in_flight = serial
            self._key_timer = self.set_timer(self.KEY_TIMEOUT, partial(self._key_done, serial))

    async def on_key_handled(self, message: KeyHandled) -> None:
        message.stop()
        await self._key_done(message.serial)

    async def _key_done(self, serial: int) -> None:
        if serial != self._key_in_flight:
            return                          # a marker given up on, home late
        self._key_in_flight = None
        if self._key_timer is not None:
            self._key_timer.stop()
            self._key_timer = None
        await self._hand_out_next_key()
