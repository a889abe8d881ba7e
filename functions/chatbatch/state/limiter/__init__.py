"""Shared rate limiter on DynamoDB: requests and tokens per minute for every worker at once.

Modules: ``policy`` (what a shard allows now: pure arithmetic, no AWS), ``item`` (how a
shard is stored in DynamoDB: read and written), ``lease`` (capacity held for some jobs
and given back), ``spares`` (send times an instance was granted and will not use), ``pacer`` (the
last step before a send: one process's sends no denser than the spacing, however late
they wake), ``limiter`` (``RateLimiter``: the conditional writes, shards, the cache).
Import from the module itself; this package re-exports nothing.

Design note
===========

**What is guaranteed.** For each model, in *any* 60-second window the requests and the
tokens granted (net of give-backs) stay within ``rpm`` and ``tpm``: the limits of the
config, lowered by what the provider tells us (``x-ratelimit-limit-*`` headers) and by
the adaptive factor after 429s. Only a reconcile that reports *more* tokens than were
estimated can push a window over (the tokens were spent; the ledger must not lie), and
estimates are worst cases, so that is rare.

**Sliding window of one-second slots, not a token bucket.** A token bucket that must
never let a 60 s window pass the limit needs ``capacity + 60 s x rate <= limit``: it
loses its capacity from the steady rate, and the capacity must hold the largest request
(a 4,096-token job against a 30,000 tpm key would cost 14 % of the limit). Instead each
shard item keeps the usage of the last 61 one-second slots (``r<slot>``, ``t<slot>``)
and a grant in slot ``s`` needs ``sum(slots s-60 .. s) + n <= limit``. Any 60 s window
lies inside 61 consecutive slots, so it never grants more than the limit; at saturation
that costs one slot in 61 (98.4 % of the limit is used).

**Sends are spaced.** Providers enforce their limits over shorter periods too (600/min as
10 per second), so each shard keeps ``nx``, when its next request may be sent, and a
grant books its requests one interval (``60 / rpm`` s, at the effective limit) after the
other: ``ADD nx k x interval IF nx <= now + horizon - (k-1) x interval`` while sends are
booked ahead (concurrent grants stack without a version lock; the returned item says
which times are whose), a version check when the shard was idle (they start now). The
worker sends each job at its time, so no rolling second carries more than ``rpm / 60``
and no minute more than ``rpm`` from all workers together. A time granted and then
released goes to the instance's next grant (``spares``). A worker denied for the pace
asks again when half the horizon is free (one race wins several sends, not one), and one
that finds only crumbs free (fewer sends than that, wanting more) waits for them too; its
wait is spread at random, twice as wide per denial in a row while a higher priority
starves (a herd of waiting workers asks about as often as there are sends to win); a 429
of a shorter period spaces the sends wider (``fb``, grows back). A process that wakes
late (a stall of its CPU) would send the late ones together: as each request is about to
be written on its connection, the process's ``pacer`` lets it go only while the last
``burst_s`` (per model, default 1 s) holds fewer of its sends than the burst's share of
the spacing and none in the last half interval, so late sends leave spread and catch up
at up to twice the rate, and sends on time are never held. Tokens are not spaced: their
estimates are worst cases, mostly given back; spacing them would spend the minute's
window in its first seconds.

**Atomic without arithmetic in conditions.** DynamoDB conditions compare an attribute
with a value; they cannot add. The client reads the item, sums the *closed* slots
itself and turns the rule into a bound on the one attribute that is still moving::

    ADD r<s> :n ...  IF r<s> <= min(limit - sum(closed slots) - hold, pace) - n

Concurrent writers are serialised by DynamoDB on that attribute, so they never lose
each other's increments and need no version lock: two workers granting at once both
succeed while capacity remains, and a write fails exactly when it would overshoot.
Closed slots only shrink (give-backs), except the previous slot at a slot boundary,
which the condition pins (``r<s-1> <= value read``). A failed write returns the fresh
item (``ReturnValuesOnConditionCheckFailure=ALL_OLD``) and the grant is recomputed
without a read. Each instance caches the item its last request returned and re-reads
(strongly consistent) at most once per slot; denials inside a slot cost no request.

**Reconcile.** A give-back (unused request, estimate minus real usage) is a plain
``ADD`` of a negative number *into the slot of the grant*, so every window that counted
the estimate now counts the real usage. A give-back to a slot already out of the window
is dropped; usage above the estimate lands in the current slot. Open leases are counted
(``o<metric><10 s slot>``): a tokens denial that their give-backs could cover says "ask
again in 1 s" instead of waiting for the window to slide. While a call is in flight its
worst-case estimate occupies the window, so with estimates far above real usage the
real tokens per minute stay below ``tpm`` by the in-flight excess (the price of never
overshooting; providers that count ``max_tokens`` up front do the same).

**Leases.** ``lease(model, priority, [t1, ..., t10])`` takes capacity for as many jobs
of a batch as fit (the longest prefix) in one conditional write; the worker reconciles
or releases each job locally and ``close()`` writes the net give-back once. Ten jobs cost
two writes instead of twenty. ``acquire`` is a lease of one.

**Priorities.** Per priority the item keeps usage in 10-second slots (``q<rank>...``;
the oldest counted in proportion to its part in the last minute, so the sum estimates
the last 60 s) and a "starving" mark (``s<rank>``, ``w<rank>``: when it was last denied
and the tokens it wanted): the time until which it is starving, i.e. its wait and 2 s
more; a grant that serves all a priority asked for removes it. It means "has jobs
waiting", so a served or idle priority's share is lent at once. A priority's *floor* is
``share x limit``. A priority below its floor leaves room for the unused floors of the
*higher* starving priorities; a priority at or above its floor borrows (so do the
requests of a batch that would take it past its floor: the prefix below is its own), leaving the
unused floors of all starving priorities (a held floor is at least the request it waits
with, so a big request finds room), and while a higher one starves it only sends now
(no booking ahead) and leaves the next second of sends free.
Holds apply to the window. So under contention every priority gets its
share, the surplus goes to the highest one that still wants more, and ``low`` is never
starved (its share is > 0); the highest starving priority is never held back, so there
is no deadlock. With slack nobody is denied, nothing is held and everybody runs at full
speed.

**Adaptive limit.** A 429 whose headers show a tenth of the minute left was not the
minute's limit (a shorter period, a fault): the limit stays. Any other 429 multiplies
the shards' factor ``f`` by 0.5 (0.9 once the limit is learned from headers and no
decrease happened in the last 30 s: then a lone 429 is a disagreement at the window's
edge, not a wrong limit; at most once per 5 s, a conditional write on the time of the
last decrease); it grows back by 0.05 every 10 s, computed lazily from ``(f, fa)`` so
recovery costs no write. Limits learned from
``x-ratelimit-limit-requests/-tokens`` are stored in the shards (``lr``, ``lt``) and the
effective limit is ``min(config, learned) x f``.

**Scale.** One DynamoDB partition takes 1,000 WCU/s; an update costs one WCU per KB of
the item. A full item holds ~200 small numbers (≈ 2 KB, 2 WCU), so one shard item takes
~500 writes/s. Without leases an acquisition is one write plus one give-back write
(≈ 250 acquisitions/s per item); with leases of 10 it is 0.2 writes (≈ 2,500/s per
item). 10,000 acquisitions/s therefore need 4 shards with leases (8 at half the
partition limit) or 40 without. Reads: at most one strongly consistent GetItem per
instance, shard and second. A model with ``S`` shards splits its limits ``S`` ways
(``limiter#<model>#<i>``); an instance picks a random shard per acquisition and tries a
second one before saying no. ``bench/bench_limiter.py`` counts the requests per
acquisition and prints this arithmetic.
"""
