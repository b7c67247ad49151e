"""Restart policies: keep each agent instance running, or escalate — never die silently.

Each replica runs under :meth:`Supervisor.supervise`, Erlang's one_for_one: when an
instance crashes (an exception escaped ``on_start``, ``on_stop`` or one of its
background tasks), only that instance is replaced, by a fresh ``Agent`` object, after
a backoff that doubles with each recent restart. Its unacknowledged messages stay
pending under the same consumer and are read again by the new instance.

``restart`` decides which exits are restarted, as in OTP: ``"permanent"`` always,
``"transient"`` only after a crash (not after ``self.stop()``), ``"temporary"`` never
(a crash is logged and the instance stays down). More than ``max_restarts`` restarts
within ``restart_period`` seconds escalate: the runtime stops every agent gracefully
and its ``async with`` block raises :class:`~ailf.errors.EscalationError`, whose
``__cause__`` is the last crash. Handler exceptions never count here: they are message
failures (retries, dead letters).

``strategy = "one_for_all"`` on the class makes the agent's local replicas one group, as
OTP's one_for_all: when one instance is restarted, every other instance of the agent in
this process is stopped (gracefully, ``on_stop`` included) and restarted with it, after
the same backoff; the intensity limit then counts the group's restarts, not each
replica's. Replicas in other processes are not touched.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio

from ailf.config import RetryPolicy
from ailf.errors import EscalationError
from ailf.runtime._cell import Cell
from ailf.runtime._spawn import SpawnSpec

__all__ = ["RESTART_BACKOFF", "Supervisor", "unwrap"]

log = logging.getLogger("ailf.runtime")

#: The pause before the first restart within a period; doubles with each further one.
RESTART_BACKOFF = 0.1


def unwrap(error: BaseException) -> BaseException:
    """The single exception inside nested one-exception groups (what a nursery raises)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class Supervisor:
    """Keeps every replica of a runtime running, or escalates; knows the live instances.

    ``stop_requested`` is set when the runtime is asked to stop (it cuts a restart's
    backoff short); ``escalate`` stops the runtime because an agent crashed too often.
    """

    def __init__(
        self, stop_requested: trio.Event, escalate: Callable[[EscalationError], None]
    ) -> None:
        #: The instances running now.
        self.cells: set[Cell] = set()
        #: True once the runtime stops: every instance is stopped, none restarted.
        self.stopping = False
        self._stop_requested = stop_requested
        self._escalate = escalate
        #: Recent restart times of each one_for_all agent's local group.
        self._group_restarts: dict[str, deque[float]] = {}
        self._supervising = 0
        self._all_done = trio.Event()
        self._all_done.set()

    def stop_all(self) -> None:
        """Stop every instance gracefully, and restart none from now on."""
        self.stopping = True
        for cell in list(self.cells):
            cell.request_stop(normal=False)

    async def wait_all_done(self) -> None:
        """Return once no replica is supervised any more."""
        await self._all_done.wait()

    async def supervise(
        self,
        spec: SpawnSpec,
        replica: int,
        new_cell: Callable[[], Cell],
        *,
        task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run replica ``replica`` of ``spec`` (each life a cell ``new_cell()`` makes)
        until shutdown, restarting it per its policy.

        Reports started once the first instance has started (or failed to). Cancelled by
        a forced shutdown like any task.
        """
        self._supervising += 1
        self._all_done = trio.Event()
        try:
            await self._supervise(spec, replica, new_cell, task_status)
        finally:
            self._supervising -= 1
            if not self._supervising:
                self._all_done.set()

    async def _supervise(
        self,
        spec: SpawnSpec,
        replica: int,
        new_cell: Callable[[], Cell],
        task_status: trio.TaskStatus,
    ) -> None:
        policy = spec.agent_cls.restart
        max_restarts = spec.agent_cls.max_restarts
        period = spec.agent_cls.restart_period
        backoff = RetryPolicy(backoff_initial=RESTART_BACKOFF, backoff_max=period, jitter=False)
        one_for_all = spec.agent_cls.strategy == "one_for_all"
        restarts: deque[float] = (
            self._group_restarts.setdefault(spec.name, deque()) if one_for_all else deque()
        )
        reported = False
        while not self.stopping:
            cell = new_cell()
            self.cells.add(cell)
            error: BaseException | None = None
            normal = False
            try:
                status = trio.TASK_STATUS_IGNORED if reported else task_status
                normal = await cell.run(task_status=status)
            except Exception as exc:
                error = unwrap(exc)
            finally:
                self.cells.discard(cell)
            reported = reported or cell.started
            if not reported:
                task_status.started()
                reported = True
            stop_error = await cell.finish()
            if stop_error is not None:
                cell.log.error("on_stop raised %s: %s", type(stop_error).__name__, stop_error)
                error = error or stop_error
            if self.stopping:
                if error is not None:
                    cell.log.error("failed while stopping: %r", error, exc_info=error)
                return
            if error is None and cell.taken_down_by is not None:
                delay = backoff.delay(max(0, len(restarts) - 1))
                cell.log.info(
                    "restarting in %.2f s with replica %d (strategy='one_for_all')",
                    delay,
                    cell.taken_down_by,
                )
                with trio.move_on_after(delay):
                    await self._stop_requested.wait()
                continue
            if error is None and not (normal and policy == "permanent"):
                cell.log.info("stopped normally; not restarted (restart=%r)", policy)
                return
            if error is not None and policy == "temporary":
                cell.log.error(
                    "crashed with %s: %s; not restarted (restart='temporary')",
                    type(error).__name__,
                    error,
                    exc_info=error,
                )
                return
            now = trio.current_time()
            while restarts and restarts[0] <= now - period:
                restarts.popleft()
            if error is not None and len(restarts) >= max_restarts:
                escalation = EscalationError(
                    f"agent {spec.name!r} replica {replica} crashed more than max_restarts="
                    f"{max_restarts} times within restart_period={period} s; last error: "
                    f"{type(error).__name__}: {error}",
                    agent=spec.name,
                    replica=replica,
                )
                escalation.__cause__ = error
                cell.log.critical("%s; stopping the runtime", escalation)
                self._escalate(escalation)
                return
            restarts.append(now)
            delay = backoff.delay(len(restarts) - 1)
            if one_for_all:
                for sibling in [c for c in self.cells if c.spec.name == spec.name]:
                    sibling.take_down(replica)
            if error is not None:
                cell.log.error(
                    "crashed with %s: %s; restarting in %.2f s (restart %d of %d within %s s)",
                    type(error).__name__,
                    error,
                    delay,
                    len(restarts),
                    max_restarts,
                    period,
                    exc_info=error,
                )
            else:
                cell.log.info("stopped itself; restarting in %.2f s (restart='permanent')", delay)
            with trio.move_on_after(delay):
                await self._stop_requested.wait()
        if not reported:
            task_status.started()
