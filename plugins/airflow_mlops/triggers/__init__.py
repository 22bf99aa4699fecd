"""Triggers run in the triggerer; they live in the installed package so the triggerer can import them."""
