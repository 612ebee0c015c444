"""`python -m leveret`: start a broker."""

from leveret.broker.cli import main

if __name__ == "__main__":
    main()
