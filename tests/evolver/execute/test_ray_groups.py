"""The pool of idle placement groups between a Ray run's seed pairs (evolver/execute/ray_groups.py), on its own:
groups are plain objects here, "removing" one records it; the real cluster's side is in test_executor_ray.py."""

from __future__ import annotations

import time

from evolver.execute.ray_groups import GroupPool

PAIR = [{"CPU": 1.0}, {"CPU": 1.0}]
WIDE = [{"CPU": 2.0}, {"CPU": 2.0}]


class Cluster:
    def __init__(self) -> None:
        self.removed: list[str] = []
        self.lost: set[str] = set()

    def pool(self, idle_s: float = 600.0) -> GroupPool:
        return GroupPool(idle_s, self.removed.append, lambda g: g not in self.lost)


def test_a_pair_of_the_same_shape_takes_the_group_back_and_another_shape_releases_it() -> None:
    c = Cluster()
    pool = c.pool()
    assert pool.take(PAIR) is None  # the caller makes a group; it gets its room
    pool.settled()
    pool.give_back(PAIR, "g1")
    assert pool.idle() == 1 and pool.take([dict(b) for b in PAIR]) == "g1" and pool.idle() == 0
    pool.give_back(PAIR, "g1")
    assert pool.take(WIDE) is None  # it will make its own group, which may need g1's room
    assert c.removed == ["g1"] and pool.idle() == 0


def test_a_group_whose_node_died_while_idle_is_dropped_not_handed_out() -> None:
    c = Cluster()
    pool = c.pool()
    pool.give_back(PAIR, "g1")
    pool.give_back(PAIR, "g2")
    c.lost.add("g2")
    assert pool.take(PAIR) == "g1" and c.removed == ["g2"]


def test_an_idle_group_is_removed_after_its_idle_time() -> None:
    c = Cluster()
    pool = c.pool(idle_s=0.2)
    pool.give_back(PAIR, "g1")
    deadline = time.monotonic() + 10
    while not c.removed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.removed == ["g1"] and pool.take(PAIR) is None


def test_a_group_taken_again_is_not_removed_by_its_old_timer() -> None:
    c = Cluster()
    pool = c.pool(idle_s=0.3)
    pool.give_back(PAIR, "g1")
    assert pool.take(PAIR) == "g1"
    time.sleep(0.6)
    assert c.removed == []


def test_release_and_close_remove_every_idle_group_and_a_closed_pool_keeps_none() -> None:
    c = Cluster()
    pool = c.pool()
    pool.give_back(PAIR, "g1")
    pool.give_back(WIDE, "g2")
    pool.release_all()
    assert sorted(c.removed) == ["g1", "g2"]
    pool.give_back(PAIR, "g3")
    pool.close()
    pool.give_back(PAIR, "g4")
    assert c.removed[2:] == ["g3", "g4"] and pool.idle() == 0


def test_a_remove_that_raises_does_not_break_the_pool() -> None:
    def gone(_group: object) -> None:
        raise ConnectionError("the cluster is gone")

    pool = GroupPool(600.0, gone, lambda g: True)
    pool.give_back(PAIR, "g1")
    pool.close()
    assert pool.idle() == 0


def test_no_group_is_kept_while_a_new_group_waits_for_room() -> None:
    """Another candidate's pair made its own group, which waits for room: the finished pair's group may be that
    room, so it is removed, not kept; once the waiting group has its room, groups are kept again."""
    c = Cluster()
    pool = c.pool()
    assert pool.take(PAIR) is None  # a new group is made; it waits for room
    pool.give_back(PAIR, "g1")
    assert c.removed == ["g1"] and pool.idle() == 0
    pool.settled()
    pool.give_back(PAIR, "g2")
    assert pool.idle() == 1 and c.removed == ["g1"]


def test_a_single_task_borrows_a_free_bundle_and_the_group_is_idle_again_when_it_is_back() -> None:
    c = Cluster()
    pool = c.pool()
    pool.give_back(PAIR, "g1")
    assert pool.lend({"CPU": 1.0}) == ("g1", 0, PAIR) and pool.idle() == 0
    assert pool.lend({"CPU": 1.0}) == ("g1", 1, PAIR)  # the group's other bundle
    assert pool.lend({"CPU": 1.0}) is None  # both out
    assert pool.take(PAIR) is None  # a pair does not get a group with bundles out; it makes its own
    pool.settled()
    pool.return_bundle("g1", 0)
    pool.return_bundle("g1", 1)
    assert c.removed == ["g1"]  # that pair's new group may have needed its room


def test_a_returned_bundle_makes_the_group_takeable_by_the_next_pair() -> None:
    c = Cluster()
    pool = c.pool()
    pool.give_back(PAIR, "g1")
    group, index, _ = pool.lend({"CPU": 1.0})
    pool.return_bundle(group, index)
    assert pool.idle() == 1 and pool.take(PAIR) == "g1" and c.removed == []


def test_a_task_that_fits_no_bundle_gets_nothing_and_a_release_removes_a_borrowed_group_when_it_is_back() -> None:
    c = Cluster()
    pool = c.pool()
    pool.give_back(PAIR, "g1")
    pool.give_back(WIDE, "g2")
    assert pool.lend({"CPU": 3.0}) is None and c.removed == []
    assert pool.lend({"CPU": 2.0})[:2] == ("g2", 0)
    pool.release_all()  # a task fitting no free bundle needs room
    assert c.removed == ["g1"]
    pool.return_bundle("g2", 0)
    assert c.removed == ["g1", "g2"] and pool.idle() == 0


def test_a_failed_borrower_or_a_closed_pool_removes_the_group_when_it_comes_back() -> None:
    c = Cluster()
    pool = c.pool()
    pool.give_back(PAIR, "g1")
    pool.lend({"CPU": 1.0})
    pool.return_bundle("g1", 0, keep=False)
    assert c.removed == ["g1"]
    pool.give_back(PAIR, "g2")
    pool.lend({"CPU": 1.0})
    pool.close()
    assert c.removed == ["g1"]
    pool.return_bundle("g2", 0)
    assert c.removed == ["g1", "g2"]


def test_a_group_whose_node_died_is_not_lent() -> None:
    c = Cluster()
    pool = c.pool()
    pool.give_back(PAIR, "g1")
    c.lost.add("g1")
    assert pool.lend({"CPU": 1.0}) is None and c.removed == ["g1"]
