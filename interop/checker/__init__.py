"""A Jepsen-style checker for message brokers: clients record a history, `check` gives the verdict."""
