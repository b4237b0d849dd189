"""The prompts stage: Jinja templates -> token ids (`builder.py`), the tasks a model can be trained for
(`tasks.py`), and the sequence objective's item lists (`sequence.py`)."""
