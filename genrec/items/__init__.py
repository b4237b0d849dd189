"""The items stage: how the model names an item (identifier styles and the item index, `index.py`; semantic
codes, `semantic.py`), what is read of an item (`text.py`), and item-token rows built from that text
(`grounded.py`)."""
