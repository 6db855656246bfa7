"""Example workflows bundled with Immortal (used by `immortal dev`)."""
