"""OpenAI-compatible HTTP serving of a splitjax Cluster (FastAPI + uvicorn;
the ``server`` extra): app.py (routes), protocol.py (wire format), stream.py
(one request's events), tokenizer.py, metrics.py (Prometheus), launch.py."""
