"""Operators: thin wrappers that render templates, call a hook and a core function, and return a small result."""
