"""DirWatch: woken by changes in a directory, by wake(), or by its timeout — never polling."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mig.fswatch import DirWatch


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[DirWatch]:
    watch = DirWatch([tmp_path])
    assert watch.event_driven
    yield watch
    watch.close()


def _woken_by(watch: DirWatch, change: Callable[[], object]) -> float:
    """Seconds until ``wait`` returns after ``change`` runs on another thread."""
    watch.wait(0)  # nothing pending
    timer = threading.Timer(0.05, change)
    started = time.monotonic()
    timer.start()
    assert watch.wait(5)
    return time.monotonic() - started


def test_an_idle_directory_lets_the_wait_time_out(watch: DirWatch) -> None:
    assert not watch.wait(0.1)


@pytest.mark.parametrize("change", ["create", "write", "delete", "rename", "symlink_swap", "chmod"])
def test_a_change_of_an_entry_ends_the_wait(watch: DirWatch, tmp_path: Path, change: str) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("a")
    (tmp_path / "..2026_a").mkdir()
    os.symlink("..2026_a", tmp_path / "..data")

    def swap() -> None:
        os.symlink("..2026_b", tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    changes: dict[str, Callable[[], object]] = {
        "create": lambda: (tmp_path / "kubelet.sock").write_text(""),
        "write": lambda: target.write_text("b"),
        "delete": target.unlink,
        "rename": lambda: os.replace(target, tmp_path / "moved"),
        "symlink_swap": swap,
        "chmod": lambda: target.chmod(0o600),
    }
    assert _woken_by(watch, changes[change]) < 2


def test_wake_ends_the_wait_from_another_thread(watch: DirWatch) -> None:
    assert _woken_by(watch, watch.wake) < 2


def test_a_directory_created_later_is_watched_from_then_on(tmp_path: Path) -> None:
    later = tmp_path / "later"
    watch = DirWatch([later])
    try:
        assert not watch.event_driven
        later.mkdir()
        watch.wait(0)
        assert watch.event_driven
        assert _woken_by(watch, lambda: (later / "x").write_text("")) < 2
    finally:
        watch.close()
