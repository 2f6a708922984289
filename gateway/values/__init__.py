"""Herald's values: frozen types that every layer shares and that the store keeps.

This package imports nothing of Herald's own (only the standard library and msgspec),
so it sits below everything: the pure core decides over these values, the services
that do I/O move them around, and ``gateway.store.codec`` encodes them, one codec for
everything that is stored or queued.

Modules: ``domain`` (the vocabulary as enums), ``claims`` (a request as it arrives and
as Herald understands it), ``profiles`` (a user's identity and contact points),
``state`` (a user's arbitration state and the changes a decision makes to it),
``records`` (messages, their timelines, kill switches), ``jobs`` (delivery jobs),
``decisions`` (what arbitration made of a claim and how).
"""
