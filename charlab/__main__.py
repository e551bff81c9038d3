"""`python -m charlab <overrides>`: the same entry point as `python -m charlab.train` and `charlab-train`."""

from charlab.train import main

if __name__ == "__main__":
    main()
