"""Routing: the registry of models, the router, backends with their breakers, and how they are
built from the configuration."""
