"""API fuzzing: schemathesis against a live server seeded with a demo community."""
