"""The budgets that decide when a gRPC peer is abusing its connection (fake clock)."""

from __future__ import annotations

from turnout.server.grpc.limits import FloodBudget, ResetBudget


def test_flood_budget_runs_out_and_refills_with_time() -> None:
    budget = FloodBudget(now=0.0, capacity=10, refill_per_s=2)
    assert all(budget.spend(0.0) for _ in range(10))
    assert not budget.spend(0.0)  # the eleventh control frame at once
    assert budget.spend(1.0)  # a second later: two back (one of them repays the overdraft)
    assert not budget.spend(1.0)


def test_flood_budget_is_earned_back_by_requests_up_to_its_capacity() -> None:
    budget = FloodBudget(now=0.0, capacity=10, refill_per_s=0, earn_per_stream=3)
    for _ in range(10):
        budget.spend(0.0)
    budget.earn(budget.earn_per_stream)
    assert [budget.spend(0.0) for _ in range(4)] == [True, True, True, False]
    budget.earn(1000)
    assert budget.level == 10  # never more than the capacity


def test_a_steady_client_never_runs_out() -> None:
    """A client opening 100 calls a second, each acknowledged with a WINDOW_UPDATE and a PING,
    for a minute: 200 control frames a second against 100 refilled and 1,000 earned."""
    budget = FloodBudget(now=0.0)
    for tick in range(6000):
        now = tick / 100
        budget.earn(budget.earn_per_stream)
        assert budget.spend(now) and budget.spend(now)


def test_resets_are_counted_per_address_across_connections() -> None:
    resets = ResetBudget(limit=3, window_s=10)
    assert all(resets.reset("10.0.0.1", t) for t in (0.0, 1.0, 2.0))
    assert not resets.reset("10.0.0.1", 3.0)  # a new connection from the same address: still over
    assert resets.reset("10.0.0.2", 3.0)  # another address has its own allowance
    assert resets.reset("10.0.0.1", 12.5)  # a new window


def test_reset_table_forgets_the_least_recent_addresses() -> None:
    resets = ResetBudget(limit=1, window_s=100, max_peers=2)
    resets.reset("a", 0.0)
    resets.reset("b", 0.0)
    resets.reset("a", 1.0)  # over, and the most recent
    resets.reset("c", 1.0)  # evicts b
    assert len(resets) == 2
    assert not resets.reset("a", 2.0)
    assert resets.reset("b", 2.0)  # forgotten: starts again
