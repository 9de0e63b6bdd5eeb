"""Bounded YAML: one document read within limits into plain Python data.

PyYAML's loaders compose the whole node graph (two ``Mark`` objects per node) before
anything can be validated, so a 1 MiB ConfigMap with a dense list under an unknown key
costs seconds and hundreds of MiB before the schema gets to say "unknown key"; aliases
are shared in the result but expand on every walk of it (a "billion laughs" of 9 levels
is 10^9 nodes to ``json.dumps``); and a duplicate mapping key silently replaces the
first. This loader reads the parser's *event stream* instead (libyaml's, through
``yaml.CSafeLoader``, when PyYAML has it; the pure-Python parser otherwise), resolves
and constructs each scalar as PyYAML's safe loader would, and builds dicts and lists
itself, checking on the way:

- the document's size (:data:`MAX_BYTES`, a ConfigMap's limit) before any parsing, and
  that it is text (UTF-8, as ConfigMap ``data`` is);
- nodes, counting each alias as the whole subtree it stands for (:data:`MAX_NODES`), so
  whatever walks the result later is bounded too; aliases (:data:`MAX_ALIASES`); nesting
  depth (:data:`MAX_DEPTH`); the length of a number (:data:`MAX_NUMBER_CHARS`) -- the
  values and their reasons are in :mod:`deviceplugin.config.limits`;
- unique keys in every mapping (YAML requires them; NVIDIA's Go tools reject duplicates),
  one document, no recursive aliases, no tags beyond the plain safe ones.

Anchors, aliases and ``<<`` merge keys work as in PyYAML (mig-parted files use them).
Each error is a :class:`DocumentError` naming the line and column (1-based) where the
problem is; the schema prefixes the config's source.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from deviceplugin.config.limits import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, MAX_NODES, MAX_NUMBER_CHARS

# libyaml's parser when PyYAML was built with it (the wheels are): ~10x faster.
LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{name}" for name in ("null", "bool", "int", "float", "str", "timestamp", "binary")}
_NUMBER_TAGS = (f"{_TAG}int", f"{_TAG}float")
_STR = f"{_TAG}str"
_MAP = f"{_TAG}map"
_SEQ = f"{_TAG}seq"
_MERGE = f"{_TAG}merge"
_VALUE = f"{_TAG}value"  # a plain "=" (YAML 1.1); read as the string it is


class DocumentError(ValueError):
    """A document that is not acceptable YAML, or exceeds a limit; ``line``/``column`` are 1-based."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.problem}" if self.line is not None else self.problem


def decode(data: bytes) -> str:
    """UTF-8 text (a leading BOM dropped); raises :class:`DocumentError` naming the bad byte."""
    if len(data) > MAX_BYTES:
        raise DocumentError(too_large(len(data)))
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError("the file is UTF-16 (it starts with a UTF-16 byte-order mark); fatia reads UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        raise DocumentError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot start or continue a character "
            f"(a ConfigMap's data must be UTF-8)",
            line,
            column,
        ) from None


def load(text: str) -> Any:
    """The one document in ``text`` as dicts, lists and scalars (None when there is none)."""
    if len(text) > MAX_BYTES:  # characters are at least a byte each: no need to encode
        raise DocumentError(too_large(len(text)))
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate, only possible in a str from elsewhere
        line, column = _position(text, exc.start)
        raise DocumentError("not text: a lone surrogate character (U+D800..U+DFFF)", line, column) from None
    if size > MAX_BYTES:
        raise DocumentError(too_large(size))
    try:
        loader = LOADER(text)
    except yaml.reader.ReaderError as exc:  # PyYAML's own reader checks the text first
        raise _reader_error(exc, text, exc.position) from None
    try:
        return _Builder(loader).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        if mark is None:
            raise DocumentError(f"not valid YAML: {problem}") from None
        raise DocumentError(f"not valid YAML: {problem}", mark.line + 1, mark.column + 1) from None
    except yaml.reader.ReaderError as exc:  # libyaml's reader, on a control character
        # libyaml gives the offset in bytes of the UTF-8 text.
        offset = len(text.encode("utf-8")[: exc.position].decode("utf-8", "ignore"))
        raise _reader_error(exc, text, offset) from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _reader_error(exc: yaml.reader.ReaderError, text: str, offset: int) -> DocumentError:
    line, column = _position(text, offset)
    return DocumentError(f"not valid YAML: character #x{exc.character:04x}: {exc.reason}", line, column)


def too_large(size: int) -> str:
    """The message for a document of ``size`` bytes over :data:`MAX_BYTES`."""
    return f"{size} bytes is larger than {MAX_BYTES} (1 MiB, the most a ConfigMap holds)"


def _position(text: str | bytes, offset: int) -> tuple[int, int]:
    newline = "\n" if isinstance(text, str) else b"\n"
    head = text[:offset]
    line = head.count(newline)  # type: ignore[arg-type]
    start = head.rfind(newline) + 1  # type: ignore[arg-type]
    return line + 1, offset - start + 1


@dataclass(slots=True)
class _Collection:
    """A mapping or sequence being built: its value, size so far, and where keys were first seen."""

    value: dict[Any, Any] | list[Any]
    anchor: str | None
    size: int = 1  # nodes, counting aliases as what they stand for
    keys: dict[Any, Any] | None = None  # mapping: key -> its mark
    key: Any = None  # mapping: the key waiting for its value
    key_mark: Any = None
    have_key: bool = False
    merges: list[dict[Any, Any]] | None = None


_OPEN = object()  # an anchor whose node is still being built (an alias to it is recursive)


class _Builder:
    """Turns one loader's events into Python data, enforcing the limits as it goes."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._stack: list[_Collection] = []
        self._anchors: dict[str, tuple[Any, int]] = {}
        self._nodes = 0
        self._aliases = 0
        self._documents = 0
        self._constructors: dict[str, Callable[[Any, yaml.Node], Any]] = loader.yaml_constructors

    def document(self) -> Any:
        events = self._loader
        handlers: dict[type, Callable[[Any], tuple[Any] | None]] = {
            yaml.ScalarEvent: self._scalar_node,
            yaml.AliasEvent: self._alias,
            yaml.SequenceStartEvent: self._open,
            yaml.MappingStartEvent: self._open,
            yaml.SequenceEndEvent: self._close,
            yaml.MappingEndEvent: self._close,
            yaml.DocumentStartEvent: self._document,
        }
        result: Any = None
        while events.check_event():
            event = events.get_event()
            handler = handlers.get(type(event))
            if handler is not None:
                done = handler(event)
                if done is not None:
                    result = done[0]
        return result

    # -- events -----------------------------------------------------------------

    def _document(self, event: yaml.DocumentStartEvent) -> None:
        self._documents += 1
        if self._documents > 1:
            raise _error("a second YAML document; fatia reads one (remove the '---')", event)

    def _scalar_node(self, event: yaml.ScalarEvent) -> tuple[Any] | None:
        self._count(1, event)
        return self._add(self._scalar(event), 1, event, scalar=True)

    def _alias(self, event: yaml.AliasEvent) -> tuple[Any] | None:
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            raise _error(f"more than {MAX_ALIASES} aliases", event)
        anchor = str(event.anchor)
        if anchor not in self._anchors:
            raise _error(f"alias *{_clip(anchor)} names no anchor defined before it", event)
        value, size = self._anchors[anchor]
        if value is _OPEN:
            raise _error(f"alias *{_clip(anchor)} is inside its own anchor (a recursive document)", event)
        self._count(size, event)
        return self._add(value, size, event)

    def _open(self, event: Any) -> tuple[Any] | None:
        self._count(1, event)
        if len(self._stack) + 1 > MAX_DEPTH:
            raise _error(f"nested deeper than {MAX_DEPTH} levels", event)
        mapping = isinstance(event, yaml.MappingStartEvent)
        tag = event.tag
        if tag not in (None, "!", _MAP if mapping else _SEQ):
            raise _error(f"tag {_clip(tag)} is not supported here", event)
        if self._stack and self._stack[-1].keys is not None and not self._stack[-1].have_key:
            raise _error("a key must be a plain value, not a list or a mapping", event)
        if event.anchor is not None:
            self._anchors[str(event.anchor)] = (_OPEN, 0)
        value: dict[Any, Any] | list[Any] = {} if mapping else []
        self._stack.append(_Collection(value, event.anchor, keys={} if mapping else None))
        return None

    def _close(self, event: yaml.CollectionEndEvent) -> tuple[Any] | None:
        done = self._stack.pop()
        value = done.value
        if done.merges and isinstance(value, dict):
            merged: dict[Any, Any] = {}
            for source in reversed(done.merges):  # earlier mappings win, as YAML says
                merged.update(source)
            merged.update(value)  # and the mapping's own keys win over merged ones
            value = merged
        if done.anchor is not None:
            self._anchors[str(done.anchor)] = (value, done.size)
        return self._add(value, done.size, None)

    def _add(self, value: Any, size: int, event: Any, *, scalar: bool = False) -> tuple[Any] | None:
        """Put a finished node into the collection being built (or return it as the root)."""
        if not self._stack:
            return (value,)
        parent = self._stack[-1]
        parent.size += size
        if isinstance(parent.value, list):
            parent.value.append(value)
            return None
        assert parent.keys is not None
        if not parent.have_key:
            mark = event.start_mark if event is not None else None
            if not scalar and isinstance(value, (dict, list)):
                raise _error("a key must be a plain value, not a list or a mapping", event)
            parent.key, parent.key_mark, parent.have_key = value, mark, True
            return None
        key, parent.have_key = parent.key, False
        if key is _MERGE_KEY:
            self._merge(parent, value, parent.key_mark)
            return None
        if key in parent.keys:
            first = parent.keys[key]
            where = f" (first at line {first.line + 1}, column {first.column + 1})" if first else ""
            raise _at(f"duplicate key {_quote(key)}{where}", parent.key_mark)
        parent.keys[key] = parent.key_mark
        parent.value[key] = value
        return None

    def _merge(self, parent: _Collection, value: Any, mark: Any) -> None:
        sources = value if isinstance(value, list) else [value]
        if not all(isinstance(s, dict) for s in sources):
            raise _at("a merge key (<<) takes a mapping or a list of mappings", mark)
        parent.merges = [*(parent.merges or []), *sources]

    # -- scalars ------------------------------------------------------------------

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == _VALUE:
            tag = _STR
        if tag == _MERGE:
            in_key = bool(self._stack) and self._stack[-1].keys is not None and not self._stack[-1].have_key
            if not in_key:
                raise _error("'<<' (a merge key) may only be a mapping's key", event)
            value: Any = _MERGE_KEY
        else:
            if tag not in _SCALAR_TAGS:
                raise _error(f"tag {_clip(tag)} is not supported here", event)
            if tag in _NUMBER_TAGS and len(event.value) > MAX_NUMBER_CHARS:
                raise _error(f"a number of {len(event.value)} characters; at most {MAX_NUMBER_CHARS}", event)
            if tag == _STR:  # most scalars: nothing to construct
                value = event.value
                if event.anchor is not None:
                    self._anchors[str(event.anchor)] = (value, 1)
                return value
            marks: tuple[Any, Any] = (event.start_mark, event.end_mark)  # libyaml's or PyYAML's Mark
            node = yaml.ScalarNode(tag, event.value, *marks, style=event.style)
            try:
                value = self._constructors[tag](self._loader, node)
            except yaml.MarkedYAMLError:
                raise
            except (ValueError, TypeError, OverflowError) as exc:
                raise _error(
                    f"cannot read {_clip(event.value)!r} as {tag.removeprefix(_TAG)}: {exc}", event
                ) from None
        if event.anchor is not None:
            self._anchors[str(event.anchor)] = (value, 1)
        return value

    def _count(self, size: int, event: Any) -> None:
        self._nodes += size
        if self._nodes > MAX_NODES:
            raise _error(f"more than {MAX_NODES} values (aliases counted as what they stand for)", event)


class _MergeKey:
    def __repr__(self) -> str:
        return "<<"


_MERGE_KEY = _MergeKey()


def _error(problem: str, event: Any) -> DocumentError:
    return _at(problem, getattr(event, "start_mark", None))


def _at(problem: str, mark: Any) -> DocumentError:
    if mark is None:
        return DocumentError(problem)
    return DocumentError(problem, mark.line + 1, mark.column + 1)


def _clip(text: object, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _quote(key: object) -> str:
    return f'"{_clip(key)}"' if isinstance(key, str) else _clip(repr(key))
