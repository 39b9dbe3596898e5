"""The `t2v` command and what it needs around it; run as `t2v ...` or `python -m cli ...`."""
