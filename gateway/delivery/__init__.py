"""Delivery: the queue between decisions and channels, and the dispatcher that drains it."""
