"""`python -m leveret` (and `leveret`): start a broker. `leveret ctl VERB ...` is leveretctl (broker/ctl/)."""

import sys


def main() -> None:
    # Imported here: the ctl client never loads the broker (nor trio), and the broker never loads it.
    if sys.argv[1:2] == ["ctl"]:
        from leveret.broker.ctl.main import main as ctl

        ctl(sys.argv[2:], prog="leveret ctl")
    from leveret.broker.cli import main as start

    start()


if __name__ == "__main__":
    main()
