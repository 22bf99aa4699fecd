"""Hooks: one per external system, each owning its connection."""
