"""Endpoint metrics kept as time series in the store: the one source the CLI, the API and
alarms read."""
