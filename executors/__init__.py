"""Executors: what does the subtask. Flow-matching action experts live in `executors.flow`."""
