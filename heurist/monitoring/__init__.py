"""Prometheus metrics of the network, read from the trusted side (ledger database and broker).

``heurist exporter`` serves them; ``monitoring/grafana/heurist-dashboard.json`` charts them. The exporter
holds the ledger's database URL and the trusted broker URL, so it runs beside the ledger, never on a miner.
"""
