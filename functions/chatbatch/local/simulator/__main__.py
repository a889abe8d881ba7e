"""``python -m chatbatch.local.simulator``: the simulator in the foreground (see ``command``)."""

from chatbatch.local.simulator.command import main

if __name__ == "__main__":
    main()
