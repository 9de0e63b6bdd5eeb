"""Property: any config text (or bytes) gives a Config or a ConfigError that says where, fast and small.

Whatever is written into the ConfigMap -- a wrong type at any key of any of the three
formats, random junk, YAML punctuation, huge and non-finite numbers, aliases, deep
nesting, duplicate keys, other encodings, the worst 1 MiB documents -- reading and
validating it (``decode`` for bytes, then ``parse_config``) returns a :class:`Config` or
raises a :class:`ConfigError` whose message starts with the source and then a line and
column or a key path; nothing else escapes. Each case takes under a second (the better
of two runs) and under 64 MiB at its peak (``tracemalloc``, a third run); the figures
are printed at the end of the run.
"""

from __future__ import annotations

import copy
import math
import re
import time
import tracemalloc
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from deviceplugin.config import limits
from deviceplugin.config.schema import Config, parse_config
from deviceplugin.config.yamlload import DocumentError, decode, load
from mig.errors import ConfigError

from .conftest import Figures

MAX_SECONDS = 1.0
MAX_MIB = 64.0
TOP_LEVEL = {
    "version",
    "gpus",
    "sharing",
    "migStrategy",
    "plugin",
    "health",
    "mig-configs",
    "select",
    "flags",
}
TOP_LEVEL |= {"resources", "imex"}
_POSITION = re.compile(r"^config:(\d+):(\d+): \S")
_DOCUMENT = re.compile(
    r"^config: (the document must be a mapping|\d+ bytes is larger than|the file is UTF-16)"
)

FATIA: dict[str, Any] = {
    "version": "v1",
    "gpus": [
        {"devices": [0, "GPU-abc"], "product": "*A100*", "mig-enabled": True, "mig-devices": {"1g.5gb": 2}},
        {"devices": "all", "replicas": 4},
    ],
    "sharing": {
        "timeSlicing": {
            "renameByDefault": False,
            "failRequestsGreaterThanOne": True,
            "resources": [{"name": "nvidia.com/gpu", "replicas": 2, "devices": "all"}],
        }
    },
    "migStrategy": "mixed",
    "plugin": {
        "deviceListStrategy": ["envvar"],
        "passDeviceSpecs": False,
        "sharedDevicesAllocationPolicy": "packed",
    },
    "health": {
        "enabled": True,
        "ignoredXids": [13, 31],
        "fatalXids": [79],
        "recoverySeconds": 60,
        "livenessSeconds": 10,
    },
}
MIG_PARTED: dict[str, Any] = {
    "version": "v1",
    "select": "balanced",
    "mig-configs": {
        "disabled": [{"devices": "all", "mig-enabled": False}],
        "balanced": [
            {
                "devices": [0, 1],
                "mig-enabled": True,
                "device-filter": ["0x20B010DE"],
                "mig-devices": {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
            }
        ],
    },
    "sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/mig-1g.5gb", "replicas": 4}]}},
}
NVIDIA: dict[str, Any] = {
    "version": "v1",
    "flags": {
        "migStrategy": "single",
        "failOnInitError": True,
        "nvidiaDriverRoot": "/",
        "gdsEnabled": False,
        "deviceDiscoveryStrategy": "auto",
        "gfd": {"oneshot": False, "sleepInterval": "60s"},
        "plugin": {"passDeviceSpecs": True, "deviceListStrategy": "envvar", "deviceIDStrategy": "uuid"},
    },
    "resources": {"gpus": [{"pattern": "*", "name": "gpu"}]},
    "sharing": {
        "timeSlicing": {"renameByDefault": True, "resources": [{"name": "nvidia.com/gpu", "replicas": 3}]}
    },
    "imex": {"channelIDs": [], "required": False},
}
BASES = {"fatia": FATIA, "mig-parted": MIG_PARTED, "nvidia": NVIDIA}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


PATHS = [(name, path) for name, base in BASES.items() for path in _paths(base)]


def attempt(source: str | bytes) -> Config | ConfigError:
    """What fatia does with a config: decode (bytes, as a file), then parse and validate."""
    try:
        text = decode(source) if isinstance(source, bytes) else source
    except DocumentError as exc:
        return ConfigError(f"config:{exc.line}:{exc.column}: {exc.problem}" if exc.line else f"config: {exc}")
    try:
        return parse_config(text)
    except ConfigError as exc:
        return exc


def check(figures: Figures, name: str, source: str | bytes) -> Config | ConfigError:
    """The property, measured: a Config or a ConfigError that says where, within time and memory."""
    seconds = math.inf
    for _ in range(2):  # the better of two: this machine is shared, a bound is about the code
        started = time.perf_counter()
        outcome = attempt(source)
        seconds = min(seconds, time.perf_counter() - started)
    tracemalloc.start()
    try:
        attempt(source)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    size = len(source) if isinstance(source, bytes) else len(source.encode("utf-8", "surrogatepass"))
    figures.add(name=name, accepted=isinstance(outcome, Config), seconds=seconds, mib=peak, size=size)
    assert seconds < MAX_SECONDS, f"{name}: {seconds:.2f} s"
    assert peak < MAX_MIB, f"{name}: {peak:.1f} MiB"
    if isinstance(outcome, ConfigError):
        _says_where(str(outcome), source)
    return outcome


def _says_where(message: str, source: str | bytes) -> None:
    assert len(message) < 1000, message[:200]
    if _POSITION.match(message) or _DOCUMENT.match(message):
        return
    assert message.startswith("config: "), message
    path = message[len("config: ") :].split(": ", 1)[0]
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    try:
        doc = load(source.decode("utf-8-sig") if isinstance(source, bytes) else source)
    except DocumentError:  # pragma: no cover - the message would have had a position
        raise AssertionError(message) from None
    # A key is named as written, or as repr() shows it when it has unprintable characters.
    keys = {form for k in doc for form in (str(k), repr(k).strip("'\""))} if isinstance(doc, dict) else set()
    assert head in TOP_LEVEL | keys or any(
        k.startswith(head.rstrip("\N{HORIZONTAL ELLIPSIS}")) for k in keys
    ), f"no key path in {message!r}"


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)


# -- strategies ---------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 10**12, limits.MAX_REPLICAS + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, 5e-324, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30), st.binary(max_size=10))
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
yaml_punctuation = st.text(
    alphabet=st.sampled_from(
        list(":-[]{},&*!|>'\"#%@`?~=<\n\t  ") + list("abcv1.0eE+_") + ["\u00e9", "\x85"]
    ),
    max_size=300,
)


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


# -- properties ---------------------------------------------------------------------------------


@given(st.sampled_from(PATHS), junk)
def test_a_wrong_value_at_any_key_of_any_format(
    figures: Figures, where: tuple[str, tuple[Any, ...]], value: Any
) -> None:
    name, path = where
    check(
        figures, f"wrong value at {name}:{'.'.join(map(str, path))}", dump(_replace(BASES[name], path, value))
    )


@given(st.sampled_from(PATHS), st.text(min_size=1, max_size=20), junk)
def test_an_extra_key_anywhere(
    figures: Figures, where: tuple[str, tuple[Any, ...]], key: str, value: Any
) -> None:
    name, path = where
    doc = copy.deepcopy(BASES[name])
    node = doc
    for step in path:
        if not isinstance(node[step], dict):
            break
        node = node[step]
    node[key] = value
    check(figures, f"extra key in {name}", dump(doc))


@given(st.text(max_size=400))
def test_random_text(figures: Figures, text: str) -> None:
    check(figures, "random text", text)


@given(yaml_punctuation)
def test_yaml_punctuation(figures: Figures, text: str) -> None:
    check(figures, "yaml punctuation", text)


@given(st.binary(max_size=400))
def test_random_bytes(figures: Figures, data: bytes) -> None:
    check(figures, "random bytes", data)


@given(
    st.sampled_from(list(BASES)),
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=255),
)
def test_other_encodings_and_flipped_bytes(
    figures: Figures, name: str, encoding: str, at: int, byte: int
) -> None:
    text = "# configuração für café\n" + dump(BASES[name])
    data = bytearray(text.encode(encoding))
    check(figures, f"{name} in {encoding}", bytes(data))
    data[at % len(data)] = byte
    check(figures, f"{name} in {encoding}, one byte changed", bytes(data))


@given(
    st.sampled_from(sorted(TOP_LEVEL | {"junk"})),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=12),
    st.booleans(),
)
def test_aliases(figures: Figures, key: str, fan_out: int, levels: int, mapping: bool) -> None:
    lines = ["version: v1", f"{key}:", "  l0: &l0 [lol, 1, .inf]"]
    for level in range(1, levels + 1):
        refs = [f"*l{level - 1}"] * fan_out
        body = (
            "{" + ", ".join(f"k{i}: {r}" for i, r in enumerate(refs)) + "}"
            if mapping
            else f"[{', '.join(refs)}]"
        )
        lines.append(f"  l{level}: &l{level} {body}")
    check(figures, f"aliases {fan_out}^{levels} under {key}", "\n".join(lines) + "\n")


@given(
    st.sampled_from(sorted(TOP_LEVEL | {"junk"})),
    st.integers(min_value=0, max_value=2_000),
    st.sampled_from(["[", "{a: ", "- ", "block"]),
)
def test_deep_nesting(figures: Figures, key: str, depth: int, style: str) -> None:
    if style == "block":
        body = "".join(f"\n{'  ' * (i + 1)}k{i}:" for i in range(depth)) + " 1"
    elif style == "- ":
        body = "\n  " + "- " * depth + "1"
    else:
        close = "]" if style == "[" else "}"
        body = style * depth + "1" + close * depth
    check(figures, f"{style!r} nested {depth} deep under {key}", f"version: v1\n{key}: {body}\n")


@given(st.sampled_from(list(BASES)), st.data())
def test_duplicated_lines(figures: Figures, name: str, data: st.DataObject) -> None:
    lines = dump(BASES[name]).splitlines()
    line = data.draw(st.sampled_from(lines))
    at = data.draw(st.integers(min_value=0, max_value=len(lines)))
    changed = data.draw(st.sampled_from([line, re.sub(r"\d+", "1", line), line.replace("true", "false")]))
    check(figures, f"{name} with a line repeated", "\n".join([*lines[:at], changed, *lines[at:]]) + "\n")


# -- the worst 1 MiB documents ------------------------------------------------------------------


def _fill(head: str, unit: str, tail: str = "\n") -> str:
    count = (limits.MAX_BYTES - len(head) - len(tail)) // len(unit)
    return head + unit * count + tail


WORST = {
    "dense flow list under an unknown key": _fill("version: v1\njunk: [", "1,", "1]\n"),
    "dense block list under gpus": _fill("version: v1\ngpus:\n", "- {}\n"),
    "100k keys under an unknown key": _fill("version: v1\njunk:\n", "  k: 1\n").replace(
        "  k: 1\n", "  k{}: 1\n", 1
    ),
    "one 1 MiB string": _fill("version: v1\nmigStrategy: ", "x"),
    "one 1 MiB key": _fill("version: v1\n? ", "k", "\n: 1\n"),
    "1 MiB of comments, then a config": _fill("", "#" * 99 + "\n", "version: v1\ngpus: [{replicas: 2}]\n"),
    "alias bomb under imex": "flags: {}\nimex:\n  a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ),
    "deep flow nesting": _fill("version: v1\ngpus: ", "[", "]\n"),
    "a long line of flow mappings": _fill("version: v1\ngpus: [", "{},", "{}]\n"),
    "a 1 MiB number": _fill("version: v1\nhealth: {recoverySeconds: ", "9", "}\n"),
    "a list of 50,000 xids": "version: v1\nhealth: {ignoredXids: [" + ", ".join(["13"] * 50_000) + "]}\n",
    "many duplicate keys": _fill("version: v1\n", "gpus: []\n"),
    "unique keys, 1 MiB": "version: v1\njunk: {" + ", ".join(f"k{i}: {i}" for i in range(60_000)) + "}\n",
}


@pytest.mark.parametrize("name", sorted(WORST))
def test_the_worst_1_mib_documents(figures: Figures, name: str) -> None:
    text = WORST[name]
    assert len(text.encode()) <= limits.MAX_BYTES + 1024
    outcome = check(figures, name, text)
    assert isinstance(outcome, ConfigError) or name.startswith("1 MiB of comments")


def test_a_config_just_over_the_size_limit(figures: Figures) -> None:
    outcome = check(figures, "1 MiB + 1 byte", "version: v1\n" + "#" * limits.MAX_BYTES)
    assert isinstance(outcome, ConfigError) and "larger than 1048576" in str(outcome)
