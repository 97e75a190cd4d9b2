"""Reliability harnesses: a soak against the real server, and the same load under crashes.

    .venv/bin/python -m reliability.soak --duration 60 --clients 32
    .venv/bin/python -m reliability.crash --backend sqlite --duration 30

See docs/reliability.md. Each run creates its own database and server and removes them.
"""
