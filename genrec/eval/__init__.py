"""The evaluation stage: `genrec evaluate` (the protocol, `protocol.py`; the baselines, `baselines.py`; the report,
`report.py`) and `genrec tune-fusion` (`fusion.py`)."""
