"""Gauges that are facts of the database, read when /metrics is scraped: nodes online per
subnet and backend, routable nodes, open jobs per subnet and state (queue depth), the
ledger's balances by kind, and the outcome of its last invariant check.

Read at scrape time rather than kept by each process: in multiprocess mode a gauge set by
one process is that process's view, and several daphne and worker processes would each
report their own, none of them the market's. A handful of grouped queries per scrape,
through the apps' selectors."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger import selectors as ledger
from registry import selectors as registry
from subnets.selectors import subnet_list_active


class DatabaseCollector(Collector):
    """A prometheus_client collector; registered on the registry each scrape builds."""

    def describe(self) -> list[Metric]:
        # Nothing to declare up front: registering it must not query the database.
        return []

    def collect(self) -> Iterator[Metric]:
        counts = registry.market_counts()
        slugs = list(subnet_list_active().values_list("slug", flat=True))

        online = GaugeMetricFamily("bim_nodes_online", "Nodes connected, per subnet they opted into and backend", labels=["subnet", "backend"])
        for (slug, backend), n in sorted(counts["nodes_online"].items()):
            online.add_metric([slug, backend], n)
        yield online

        # Every active subnet has a series, 0 when no node can take its jobs: an alert on
        # "no routable node" needs the zero, not a missing series.
        routable = GaugeMetricFamily("bim_nodes_routable", "Nodes that can be offered jobs now (model ready, benchmarked, not banned)", labels=["subnet"])
        for slug in sorted(set(slugs) | {key[0] for key in counts["nodes_routable"]}):
            routable.add_metric([slug], counts["nodes_routable"].get((slug,), 0))
        yield routable

        jobs = GaugeMetricFamily("bim_jobs_open", "Jobs not yet finished, per subnet and state (queued: waiting for a node)", labels=["subnet", "state"])
        for slug in sorted(set(slugs) | {key[0] for key in counts["jobs_open"]}):
            for state in registry.OPEN_JOB_STATES:
                jobs.add_metric([slug, str(state)], counts["jobs_open"].get((slug, state), 0))
        yield jobs

        balances = GaugeMetricFamily(
            "bim_ledger_balance_micro_credits",
            "Micro-credits in the ledger's accounts, by kind, pending legs included (user_hold: held for open jobs; node_escrow: nodes' escrow; registry_revenue: the registry's share)",
            labels=["kind"],
        )
        for kind, total in ledger.totals_by_kind().items():
            balances.add_metric([str(kind)], total)
        yield balances

        last = ledger.ledger_check_last()
        if last is not None:
            yield GaugeMetricFamily("bim_ledger_violations", "Invariant violations the last full ledger check found", value=last["violations"])
            yield GaugeMetricFamily("bim_ledger_last_check_timestamp_seconds", "When the last full ledger check ran (Unix time)", value=last["checked_at"])
