"""Widgets and renderers of the TUI: they replay trace events and never compute the maths."""
