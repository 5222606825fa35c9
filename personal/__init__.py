"""personal: personalize an LLM assistant for many users with few examples each."""

__version__ = "0.1.0"
