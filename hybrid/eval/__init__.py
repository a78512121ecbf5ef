"""Closed-loop evaluation of agents side by side (`hybrid eval --episodes N --json`)."""
