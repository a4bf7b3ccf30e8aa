"""Measurement: one :class:`~metaedge.deploy.measure.base.Runner` interface and one
:class:`~metaedge.deploy.measure.base.MeasureResult` for local, RPC and HTTP runs
(:mod:`.local`, :mod:`.rpc`, :mod:`.http`); :func:`metaedge.deploy.measure.select.runner_for`
picks the runner for an artifact; :mod:`.cache` keeps measured latencies on disk."""
