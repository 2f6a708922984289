"""State: one interface (``base.Store``), two implementations (``memory``, ``redis``)."""
