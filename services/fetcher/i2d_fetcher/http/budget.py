"""A budget of body bytes in flight, so that memory does not grow with what servers send.

Without it a worker holds `thread_count x max_body_bytes` at worst (256 rows x 64 MiB): a
few hosts serving large bodies, or a CPU stage that falls behind while downloads go on, take a
machine down. With it, the bodies a worker process holds (being read, waiting for the imaging
thread, being decoded) add up to at most its part of `max_body_bytes_in_flight`.

How a row uses it (row.py, client.py):

- once it holds its host's slot, before its request, it reserves `BASE_RESERVATION` bytes
  (most images fit in it, so they never wait again); a row that cannot get even that waits
  before connecting, holding nothing. Never before the slot: a row holding memory while it
  waits for a slot held by rows waiting for memory would deadlock them;
- when the headers declare a larger body, or the body read so far outgrows the reservation, it
  grows the reservation, waiting if the budget is spent; growers go before new rows, since
  they hold a connection;
- it releases everything once its image is encoded (or the row failed).

New rows' base reservations may fill only half the budget, so rows already reading have room
to grow. Waiting never deadlocks: if every row holding a reservation is itself waiting to
grow, nothing would ever be released, so the oldest grower is let through (the budget is
overdrawn by about that one body for as long as it lives; a body alone larger than the budget
goes through the same way). Time spent waiting here is local, not the server's: it is not
counted against the download's timeout (client.py).

One budget per event loop (a worker process, or the inline fetcher); not thread-safe.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

BASE_RESERVATION = 256 * 1024  # bytes reserved before a request: most images fit in it


class ByteBudget:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a byte budget needs a capacity of at least 1 byte")
        self.capacity = capacity
        self.used = 0
        self.holders = 0  # reservations with bytes
        self._growers: deque[tuple[Reservation, int, asyncio.Future[None]]] = deque()
        self._newcomers: deque[tuple[Reservation, int, asyncio.Future[None]]] = deque()

    def reservation(self) -> Reservation:
        return Reservation(self)

    @property
    def waiting(self) -> int:
        return len(self._growers) + len(self._newcomers)

    # ------------------------------------------------------------------ internals

    def _fits(self, n: int, newcomer: bool = False) -> bool:
        # New rows may fill half the budget with their base reservations: the other half is
        # room for the bodies of rows already reading, which would otherwise all wait for
        # each other with nothing left to grow into.
        limit = self.capacity // 2 if newcomer else self.capacity
        return self.used + n <= limit or self.used == 0

    def _take(self, reservation: Reservation, n: int) -> None:
        if reservation.held == 0:
            self.holders += 1
        reservation.held += n
        self.used += n

    def _give_back(self, reservation: Reservation) -> None:
        if reservation.held:
            self.used -= reservation.held
            self.holders -= 1
            reservation.held = 0
        if self._growers or self._newcomers:  # nobody waits, nobody to wake (most releases)
            self._wake()

    async def _acquire(self, reservation: Reservation, n: int) -> None:
        grower = reservation.held > 0
        queue = self._growers if grower else self._newcomers
        if not queue and (grower or not self._growers) and self._fits(n, not grower):
            self._take(reservation, n)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (reservation, n, future)
        queue.append(entry)
        self._wake()  # a new grower may complete the "everyone is waiting" picture
        started = time.monotonic()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._give_back_part(reservation, n)  # granted, but the caller is gone
            elif entry in queue:
                queue.remove(entry)
            raise
        finally:
            reservation.waited += time.monotonic() - started

    def _give_back_part(self, reservation: Reservation, n: int) -> None:
        reservation.held -= n
        self.used -= n
        if reservation.held == 0:
            self.holders -= 1
        self._wake()

    def _wake(self) -> None:
        for queue in (self._growers, self._newcomers):
            while queue and self._fits(queue[0][1], queue is self._newcomers):
                reservation, n, future = queue.popleft()
                if future.done():
                    continue
                self._take(reservation, n)
                future.set_result(None)
            if queue:
                break  # the oldest waiter first: nobody overtakes it
        # Every holder waits to grow: nothing will be released unless one goes on.
        if self._growers and len(self._growers) >= self.holders:
            reservation, n, future = self._growers.popleft()
            if not future.done():
                self._take(reservation, n)
                future.set_result(None)


class Reservation:
    """One row's share of the budget; `release()` (or leaving the `async with`) returns it."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0
        self.waited = 0.0  # seconds spent waiting for bytes

    def fits(self, n: int) -> bool:
        """Whether holding `n` bytes in all needs no wait."""
        if n <= self.held:
            return True
        return not self.budget.waiting and self.budget._fits(n - self.held, self.held == 0)

    def reserve_now(self, n: int) -> bool:
        """Hold at least `n` bytes in all if that needs no wait (what `reserve` would do
        without suspending); False, holding nothing more, if it would wait."""
        if not self.fits(n):
            return False
        if n > self.held:
            self.budget._take(self, n - self.held)
        return True

    async def reserve(self, n: int) -> None:
        """Hold at least `n` bytes in all, waiting for them if the budget is spent."""
        if n > self.held:
            await self.budget._acquire(self, n - self.held)

    def release(self) -> None:
        self.budget._give_back(self)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
