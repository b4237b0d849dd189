"""The inference stage: a trained model directory answers requests. `recommender.py` is the facade every command
uses; under it the catalog, the constrained search (`constrained.py`), the engines (`backends.py`), the hybrid's
retriever (`retriever.py`, `sasrec.py`), file jobs (`jobs.py`) and `catalog add` (`new_items.py`)."""
