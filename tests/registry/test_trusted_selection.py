"""Selection for trusted subnets (issue 15): with `trusted_only`, only candidates the
registry operates are ever picked, whatever their weight; the trusted nodes keep the ranks
they have without the filter, and too few trusted nodes give fewer picks, never others.
Pure: no database."""

from __future__ import annotations

from bim_core.selection import Candidate, NodeIndex, select_nodes

KEYS = [f"job-{i}" for i in range(2_000)]


def pool(trusted: int, untrusted: int, *, untrusted_weight: float = 100.0) -> list[Candidate]:
    nodes = [Candidate(node_id=f"t-{i}", owner_id=f"to-{i}", weight=1.0, trusted=True) for i in range(trusted)]
    nodes += [
        Candidate(node_id=f"u-{i}", owner_id=f"uo-{i}", weight=untrusted_weight) for i in range(untrusted)
    ]
    return nodes


def test_trusted_only_never_picks_an_untrusted_node_however_heavy():
    index = NodeIndex(pool(3, 50))
    for key in KEYS:
        picks = index.select(key, 2, trusted_only=True)
        assert len(picks) == 2
        assert all(c.trusted for c in picks), key


def test_without_the_filter_the_heavy_untrusted_nodes_win():
    # The control: the filter, not the weights, keeps them out above.
    index = NodeIndex(pool(3, 50))
    assert any(not c.trusted for key in KEYS[:50] for c in index.select(key, 2))


def test_too_few_trusted_nodes_give_fewer_picks_not_untrusted_ones():
    index = NodeIndex(pool(1, 20))
    assert [c.node_id for c in index.select("job-1", 2, trusted_only=True)] == ["t-0"]
    assert NodeIndex(pool(0, 20)).select("job-1", 2, trusted_only=True) == []


def test_trusted_nodes_keep_their_relative_rank_under_the_filter():
    mixed = pool(5, 30)
    trusted_alone = [c for c in mixed if c.trusted]
    for key in KEYS[:200]:
        assert select_nodes(key, mixed, 3, trusted_only=True) == select_nodes(key, trusted_alone, 3)


def test_the_filter_combines_with_exclusions_and_diversity():
    nodes = pool(4, 10) + [Candidate(node_id="t-same-owner", owner_id="to-0", weight=50.0, trusted=True)]
    index = NodeIndex(nodes)
    for key in KEYS[:300]:
        picks = index.select(key, 3, trusted_only=True, exclude_node_ids=["t-1"])
        assert all(c.trusted for c in picks) and "t-1" not in {c.node_id for c in picks}
        assert len({c.owner_id for c in picks}) == len(picks) == 3


def test_a_candidate_is_untrusted_unless_it_says_so():
    assert Candidate(node_id="n", owner_id="o", weight=1.0).trusted is False
