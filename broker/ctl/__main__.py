"""`python -m leveret.broker.ctl`: the same as leveretctl."""

from .main import main

if __name__ == "__main__":
    main()
