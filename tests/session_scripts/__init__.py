"""Helpers and fixture scripts for the session tests."""
