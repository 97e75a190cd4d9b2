"""Reports: activity over time and the co-production indicators (built on the network)."""
