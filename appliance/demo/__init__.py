"""The demo store: what ``make run`` shows a newcomer."""
