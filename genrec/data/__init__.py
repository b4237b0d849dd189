"""The data stage: what a user hands genrec (interaction and catalog tables, `read.py`) becomes a prepared
dataset (`prepare.py`: leave-one-out splits, the catalog, each user's sequence), read back as `PreparedData`
(`prepared.py`)."""
