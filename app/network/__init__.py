"""The support network: who helped whom, built from posted exchanges, its metrics and exports."""
