"""Table modules: key -> value(s) lookups used by routing, aliases and auth."""
