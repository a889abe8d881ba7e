"""The shared budget on DynamoDB: reserve the worst case before a call, settle after.

Design note
===========

**Items.** Per UTC day one ledger ``budget#day#YYYY-MM-DD`` / ``ledger`` (the day is in
the key, so the money resets at midnight: a new day is a new item). A job's reservation
is one item per job, ``budget#job#<job key>`` / ``resv``, whatever the day: it names
its ``owner`` and the ``day`` it was made, whose ledger holds its money (so the one-copy
guard does not reset at midnight, and a settle after midnight charges that day).
Reservations not yet settled also have a small marker in ``budget#open#YYYY-MM-DD``
(``sk=<job key>``, the reservation's day; ``...#<k>`` for shard ``k``) so finding the
dead ones never reads the settled ones. An optional per-batch ledger lives at
``budget#batch#<id>``; a raised daily limit at ``budget#limits``. Amounts are integer nano-dollars.

**No arithmetic in conditions.** A ledger keeps ``committed`` (reserved + spent) and
``spent``. A reservation of ``n`` is ``ADD committed :n IF committed <= limit - n``: the
client does the subtraction, DynamoDB compares one attribute with one value, and
concurrent reservations serialise on that attribute, so under any concurrency
``committed`` never passes the limit. Settling replaces the reservation by the real
cost (``ADD committed :real-n, spent :real``) and releasing removes it.

**The worst case is a true upper bound.** A byte-level BPE token covers at least one
byte, so the prompt never has more tokens than its UTF-8 bytes (plus the per-message
framing); the output never more than ``max_tokens``. Reserving at that bound (not at the
estimate) is what makes "settled never exceeds the limit" hold, not just usually hold.

**Exactly once.** Reserve is one transaction: the reservation item (condition: it does
not exist yet), its open marker and the ledger(s). A redelivered job finds its
reservation and gets it back (its deadline extended) instead of reserving twice; a job
already settled gets ``AlreadySettled``, so nobody calls the provider for it again. The
reservation names its ``owner`` (the copy of the job holding it: an SQS message id): a
second copy in flight gets ``HeldElsewhere`` and looks again later, until the owner's
claim expires and it may take over (compare-and-swap on the owner), so two copies (two
messages) never call the provider at once, before or after a midnight: the reservation
is the job's, not the day's, and keeps the day it was made (its settle and release go to
that day's ledger). One message delivered twice at once (SQS is at-least-once) is one
copy to this check.
Settle is a set of transaction items (reservation ``reserved -> settled``, marker gone,
ledgers) that the worker commits in the same transaction as the job's final state and
counters, so a settle happens once or not at all.

**One ledger write per invocation.** The new jobs of an invocation reserve together:
one transaction with each job's reservation and marker and one charge of their sum per
ledger (``reserve_many``). All or nothing: when anything stands in the way (a job holds
a reservation already, the sum does not fit) they reserve one by one as above. That
takes nine of ten reservation writes off the hot day ledger.

**Crashed workers.** A reservation expires ``reservation_ttl_s`` after it was made
(longer than any Lambda can run; the config checks it). When a reservation is refused
because reservations fill the budget, the worker reclaims the expired ones: a query of
the open markers of the last days (dead reservations from an earlier day still hold
their batch's ledger), at most every ``RECLAIM_EVERY_S`` per worker; then it tries once
more. Nothing leaks for longer than the TTL plus a refusal.

**Deferral, not failure.** Refused because ``spent + n`` passes the daily limit: retry
after the next UTC midnight (the worker re-sends the job with a delay, in steps of at
most 15 minutes). Over a batch's limit: retry in 5 minutes (the batch's budget may be
raised). Refused only because reservations in flight hold the rest (they usually settle
far below their worst case): retry in ``BUSY_RETRY_S``. A request whose worst case
alone is above ``request_cap_usd`` is refused for good.

**Raising the daily limit** without a deploy: ``set_daily_limit`` stores an override
item (``budget#limits``) that every worker reads at most every ``LIMIT_CACHE_S``.

**Scale.** Every invocation's reservation and settlement writes the day ledger: one
item takes 1,000 WCU/s, about 2,300 jobs/s at 0.43 WCU per job. For more,
``scale.target_jobs_per_s`` splits the day's ledger (and its open markers' partition, and
a limited batch's ledger) into shards: ``budget#day#<day>`` (shard 0, the unsharded item)
and ``budget#day#<day>#<k>``. Shard ``k`` is charged against its slice of the limit
(``ledger.share``: the slices add up to the limit), so the shards' ``committed`` add up
to at most the limit. A reservation picks a shard at random (an invocation's group: one
for all); a shard without room for it names another that has room, or, when none has
alone, moves every other shard's room to it in one transaction (each moved slice is a
conditional charge on its shard, taken off the tried shard's ``committed``: the sum is
unchanged and each shard stays within its slice). Refused only when the shards together
have no room. The day's shard count is fixed by its first reservation
(``budget#day#<day>`` / ``layout``; a day whose unsharded ledger exists already stays one
item): workers deployed with another target agree with it until midnight. A batch's
ledger has the shards the batch was registered with. ``docs/scale.md`` has the figures.

**Where the code is.** ``ledger``: the UTC day, every item's key and the two writes a
ledger takes (a charge within the limit, an addition). ``reservations``: a job's ``Ask``
and ``Reservation`` and the items that hold, extend, settle and release one.
``errors``: what a reservation can be refused with. ``budget``: ``Budget``, which
reserves, settles, releases and reclaims.
"""
