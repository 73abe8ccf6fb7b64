"""Shared fixtures live next to the tests that use them: tests/integration/conftest.py starts the
real bundle (with real Triton and vLLM backends) once per session."""
