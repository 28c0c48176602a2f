"""metrics: the metric registry, daily rollups from the ledgers, the org tree, the datacube
check, contracts, targets and result-based fees (see README "Metrics, targets and fees")."""
