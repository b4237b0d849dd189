"""The inference stage: a trained model directory answers requests. `recommender.py` is the small facade every
command uses; under it the request and answer types (`query.py`, `answer.py`), a generative model's search
(`generation.py`), the hybrid (`hybrid.py`), scoring given candidates (`scoring.py`), the catalog, the constrained
search (`constrained.py`), the engines (`backends.py`), the hybrid's retriever (`retriever.py`, `sasrec.py`), file
jobs (`jobs.py`) and `catalog add` (`new_items.py`)."""
