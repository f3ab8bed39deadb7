"""An incremental JSON scanner for tool-call parsing: is the text from a position (a prefix of) one JSON
object, where does it end, and where are its top-level members? Fed as streamed text arrives."""

from __future__ import annotations

import re
from dataclasses import dataclass

JSON_WHITESPACE = " \t\n\r"  # JSON's whitespace (tool_parsers trims around calls with it too)

# What the JSON scanner expects next (outside strings, numbers and literals).
_VALUE, _FIRST_ITEM, _FIRST_KEY, _KEY, _COLON, _AFTER_VALUE = range(6)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_LITERAL_REST = {"t": "rue", "f": "alse", "n": "ull"}


@dataclass(slots=True)
class Member:
    """Spans (absolute, end exclusive; -1 while unknown) of one key/value pair of the scanned object."""

    key_start: int
    key_end: int = -1
    value_start: int = -1
    value_end: int = -1
    key: str | None = None


class JsonObjectScanner:
    """Checks, as text arrives, that the text from `start` is (a prefix of) one JSON object; records
    the spans of its top-level members. `pos` is where scanning stopped: the end of the text, the
    character that broke the JSON (`failed`), or past the closing brace (`end`)."""

    def __init__(self, start: int):
        self.pos = start
        self.end = -1
        self.failed = False
        self.members: list[Member] = []
        self._stack: list[str] = []
        self._expect = _VALUE
        self._in_string: str | None = None  # "key" or "value" while inside a string
        self._escape = 0  # -1 right after a backslash; n > 0: hex digits of a \\u escape still to come
        self._literal = ""  # the rest of true/false/null still to come
        self._number_start = -1

    def scan(self, text: str) -> None:
        i, n = self.pos, len(text)
        while i < n and self.end < 0:
            c = text[i]
            if self._in_string is not None:
                if self._escape:
                    if self._escape == -1 and c in '"\\/bfnrtu':
                        self._escape = 4 if c == "u" else 0
                    elif self._escape > 0 and c in _HEX_DIGITS:
                        self._escape -= 1
                    else:
                        break
                    i += 1
                elif (run := _STRING_RUN.match(text, i)) is not None:
                    i = run.end()
                elif c == "\\":
                    self._escape, i = -1, i + 1
                elif c == '"':
                    i += 1
                    self._end_string(i)
                else:  # a raw control character
                    break
            elif self._literal:
                if c != self._literal[0]:
                    break
                self._literal, i = self._literal[1:], i + 1
                if not self._literal:
                    self._end_value(i)
            elif self._number_start >= 0:
                if c in _NUMBER_CHARS:
                    i += 1
                    continue
                if not _NUMBER.fullmatch(text, self._number_start, i):
                    break
                self._number_start = -1
                self._end_value(i)  # c is looked at again, as what follows the number
            elif c in JSON_WHITESPACE:
                i += 1
            elif not self._step(c, i):
                break
            else:
                i += 1
        else:
            self.pos = i
            return
        self.pos = i
        self.failed = self.end < 0

    def _step(self, c: str, i: int) -> bool:
        """One structural character; False if it breaks the JSON."""
        expect = self._expect
        if expect in (_VALUE, _FIRST_ITEM):
            if expect == _FIRST_ITEM and c == "]":
                self._close(i + 1)
                return True
            if not self._stack and c != "{":
                return False
            if len(self._stack) == 1:
                self.members[-1].value_start = i
            if c in "{[":
                self._stack.append(c)
                self._expect = _FIRST_KEY if c == "{" else _FIRST_ITEM
            elif c == '"':
                self._in_string = "value"
            elif c in _LITERAL_REST:
                self._literal = _LITERAL_REST[c]
            elif c in "-0123456789":
                self._number_start = i
            else:
                return False
            return True
        if expect in (_FIRST_KEY, _KEY):
            if expect == _FIRST_KEY and c == "}":
                self._close(i + 1)
                return True
            if c != '"':
                return False
            if len(self._stack) == 1:
                self.members.append(Member(i))
            self._in_string = "key"
            return True
        if expect == _COLON:
            self._expect = _VALUE
            return c == ":"
        if c == ",":
            self._expect = _KEY if self._stack[-1] == "{" else _VALUE
            return True
        if c == ("}" if self._stack[-1] == "{" else "]"):
            self._close(i + 1)
            return True
        return False

    def _end_string(self, end: int) -> None:
        kind, self._in_string = self._in_string, None
        if kind == "key":
            if len(self._stack) == 1:
                self.members[-1].key_end = end
            self._expect = _COLON
        else:
            self._end_value(end)

    def _end_value(self, end: int) -> None:
        if len(self._stack) == 1:
            self.members[-1].value_end = end
        self._expect = _AFTER_VALUE

    def _close(self, end: int) -> None:
        self._stack.pop()
        if self._stack:
            self._end_value(end)
        else:
            self.end = end
