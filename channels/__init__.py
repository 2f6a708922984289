"""Channel adapters: one module per provider behind ``base.ChannelAdapter``."""
