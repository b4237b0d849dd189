"""The serving stage: `genrec serve`, the OpenAI-compatible HTTP API and its page over one Recommender."""
