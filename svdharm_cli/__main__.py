"""Allow ``python -m svdharm_cli``."""

from svdharm_cli.ui.app import main

if __name__ == "__main__":
    main()
