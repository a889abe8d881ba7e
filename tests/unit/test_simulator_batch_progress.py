"""A batch run's invariants, whatever the clock does: a line is answered once, in order,
only once it is due and never after a cancel or the expiry; the run ends once, in the
phase its first stop decides, and every line is then answered or left unrun."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatbatch.local.simulator.batch_progress import ENDED, Phase, Run

steps = st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), max_size=12)
maybe = st.one_of(st.none(), st.floats(min_value=0, max_value=40, allow_nan=False))


@given(
    count=st.integers(min_value=1, max_value=40),
    turnaround=st.floats(min_value=0, max_value=20, allow_nan=False),
    expire_after=st.floats(min_value=0.01, max_value=40, allow_nan=False),
    cancel_at=maybe,
    waits=steps,
)
def test_lines_are_answered_when_due_and_never_after_the_run_stops(
    count: int,
    turnaround: float,
    expire_after: float,
    cancel_at: float | None,
    waits: list[float],
) -> None:
    run = Run(started=0.0, count=count, turnaround_s=turnaround, expire_at=expire_after)
    answered: list[tuple[int, float]] = []
    now = 0.0
    for wait in [*waits, 100.0]:  # the last step is past every deadline
        now += wait
        if cancel_at is not None and run.cancel_at is None and now >= cancel_at:
            run.cancel(cancel_at)
        run.advance(now, lambda index, at=now: answered.append((index, at)))
    assert [index for index, _ in answered] == list(range(run.answered))
    stop = min(expire_after, cancel_at if cancel_at is not None else expire_after)
    for index, at in answered:
        assert run.due(index) <= at + 1e-9
        assert run.due(index) <= stop + 1e-6
    assert run.phase(now) in ENDED and run.ended_at is not None
    if run.answered < count:
        assert run.ended in (Phase.cancelled, Phase.expired)
        assert run.due(run.answered) > stop - 1e-6  # the first unrun line was not due yet
    else:
        assert run.ended is Phase.completed


def test_an_admin_expiry_keeps_the_lines_already_due() -> None:
    run = Run(started=0.0, count=4, turnaround_s=8.0, expire_at=100.0)
    answered: list[int] = []
    run.expire_now(4.0, answered.append)
    assert answered == [0, 1] and run.ended is Phase.expired and run.ended_at == 4.0
    run.advance(50.0, answered.append)  # an ended run answers nothing more
    assert answered == [0, 1]
