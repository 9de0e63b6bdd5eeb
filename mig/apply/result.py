"""What an apply did and what still waits: :class:`ApplyResult` for the caller, and the
:class:`Progress` the steps fill in while they run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mig.inventory import Inventory


@dataclass(frozen=True)
class ApplyResult:
    inventory: Inventory  # as read back after the apply
    waiting: tuple[str, ...] = ()  # what could not be done yet, and why
    withheld: frozenset[str] = frozenset()  # UUIDs not to advertise (waiting to be destroyed)
    reset_required: tuple[int, ...] = ()  # GPUs whose MIG mode change awaits a reset
    created: int = 0
    destroyed: int = 0

    @property
    def done(self) -> bool:
        return not self.waiting and not self.reset_required


@dataclass
class Progress:
    """Counts and waits of one apply (or one restore), as its steps go."""

    waiting: list[str] = field(default_factory=list)
    waiting_gpus: set[int] = field(default_factory=set)  # GPUs whose target is not reached yet
    withheld: set[str] = field(default_factory=set)
    reset_required: list[int] = field(default_factory=list)
    created: int = 0
    destroyed: int = 0

    def wait(self, gpu: int, message: str, *, uuids: Sequence[str] = ()) -> None:
        """GPU ``gpu`` does not reach its target in this apply, because of ``message``."""
        self.waiting.append(message)
        self.waiting_gpus.add(gpu)
        self.withheld.update(uuids)

    def result(self, inventory: Inventory) -> ApplyResult:
        return ApplyResult(
            inventory=inventory,
            waiting=tuple(self.waiting),
            withheld=frozenset(self.withheld),
            reset_required=tuple(self.reset_required),
            created=self.created,
            destroyed=self.destroyed,
        )
