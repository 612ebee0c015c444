"""The one exception a bad configuration raises."""


class ConfigError(Exception):
    """Every problem found in a configuration, reported together so one edit can fix them all."""

    def __init__(self, errors: list[str], source: str = "configuration") -> None:
        self.errors = errors
        self.source = source
        listing = "\n".join(f"  - {error}" for error in errors)
        super().__init__(f"{len(errors)} error(s) in {source}:\n{listing}")
