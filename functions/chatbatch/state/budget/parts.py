"""A provider batch's money (the batch route: docs/batch-route.md, "The part's money").

A part reserves once per batch among its jobs (``Budget.reserve_part``): the batch's jobs'
worst cases at the batch prices, summed, under the job key ``part_key(part, batch)``.
Such a reservation is never reclaimed by the workers (``PART_HOLD_S``): a provider batch
holds its money for up to a day, and the gatherer that made it closes it. Its ``nanos``
is what it still holds: each ingested chunk takes its jobs' worst cases out of it in the
transaction that books their real cost (``ingest_parts``), and ``Budget.close_part``
releases what is left, on the condition that it is still that amount. So a part's
reservation is never given back twice, nor for more than it holds.
"""

from __future__ import annotations

from chatbatch.state.budget.ledger import Item, reservation_key
from chatbatch.state.budget.reservations import SAME_RID, Ask, Reservation, ledgers_of
from chatbatch.state.ddb import n, s

PART_HOLD_S = 10 * 365 * 86_400  # reclaim never comes: the gatherer closes its parts


def part_key(part_id: str, batch_id: str) -> str:
    """The job key of a part's reservation for one batch (no job key has a ``:``-led
    ``part`` batch: a batch id is the job key's first field)."""
    return f"part:{part_id}:{batch_id}"


def part_ask(
    part_id: str,
    batch_id: str,
    nanos: int,
    batch_limit_nanos: int | None = None,
    batch_shards: int = 1,
) -> Ask:
    """What one batch's jobs in a part ask of the budget (``Budget.reserve_part``)."""
    return Ask(
        part_key(part_id, batch_id), nanos, batch_id, batch_limit_nanos, part_id, batch_shards
    )


def ingest_parts(
    table: str, r: Reservation, actual_nanos: int, worst_nanos: int
) -> tuple[list[Item], list[tuple[Item, dict[str, int]]]]:
    """A chunk of ``r``'s jobs answered: the reservation gives up their worst cases
    (on the condition that it is still reserved, the same one, and holds that much), and
    each ledger books their real cost (``committed += actual - worst``, ``spent +=
    actual``). In the parts form of ``settle_parts``: the caller commits them with the
    jobs' final states and sums the ledger additions over the chunk."""
    taken: Item = {
        "Update": {
            "TableName": table,
            "Key": reservation_key(r.job_key),
            "UpdateExpression": "ADD #n :minus",
            "ConditionExpression": f"#s = :reserved AND {SAME_RID} AND #n >= :worst",
            "ExpressionAttributeNames": {"#n": "nanos", "#s": "state", "#rid": "rid"},
            "ExpressionAttributeValues": {
                ":minus": n(-worst_nanos),
                ":worst": n(worst_nanos),
                ":reserved": s("reserved"),
                ":rid": s(r.rid),
            },
        }
    }
    deltas = {"committed": actual_nanos - worst_nanos, "spent": actual_nanos}
    return [taken], [(key, dict(deltas)) for key in ledgers_of(r)]
