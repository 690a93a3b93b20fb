"""Run numbered jobs side by side, started in order, a bounded number at once.

A sweep's trials run in threads of the driver (each drives its own pool; numpy and
Ray calls release the GIL, so the coordinators overlap). Trial i starts only after
trial i-1 has started and `reserve(i)` has granted it its resources, in this thread:
the early-stopping rule relies on every earlier trial having started
(experiments/sweeps/early_stopping.py), and a trial never holds a part of a cluster that
an earlier one waits for.
"""

from __future__ import annotations

import queue
import threading

JOIN_AFTER_SECOND_SIGNAL_S = 30  # a second Ctrl-C: how long the trials get to end their runs


def run_in_order(count: int, at_once: int, reserve, work, stopping) -> None:
    """work(i, slot) for i = 0..count-1, each in a thread, at most `at_once` at a time.

    reserve(i) blocks until job i may start and returns its slot, or None to start no
    more (a stop was asked for). stopping(): no more jobs start. `work` releases its
    slot. An exception escaping `work` (a bug: trials catch their own failures) is
    raised here once every started job has ended."""
    done: queue.Queue[int] = queue.Queue()
    running: dict[int, threading.Thread] = {}
    escaped: list[BaseException] = []

    def body(i, slot):
        try:
            work(i, slot)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread
            escaped.append(e)
        finally:
            done.put(i)

    following = 0
    try:
        while following < count or running:
            if following < count and len(running) < at_once and not stopping():
                slot = reserve(following)
                if slot is None:
                    following = count
                    continue
                thread = threading.Thread(target=body, args=(following, slot), daemon=True,
                                          name=f"rayprop-trial-{following + 1}")
                running[following] = thread
                thread.start()
                following += 1
                continue
            if stopping():
                following = count  # the running ones stop after their step; start no more
            try:
                i = done.get(timeout=0.5)  # short: the main thread must get to its signal handler
            except queue.Empty:
                continue
            running.pop(i).join()
    except KeyboardInterrupt:  # a second Ctrl-C: the trials are stopping; give them a moment
        for thread in running.values():
            thread.join(JOIN_AFTER_SECOND_SIGNAL_S / max(len(running), 1))
        raise
    if escaped:
        raise escaped[0]
