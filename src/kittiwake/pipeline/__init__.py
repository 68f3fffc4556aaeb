"""The message pipeline: checks, modifiers and routing to targets."""
