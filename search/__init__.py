"""CIFAR-10 architecture search over the NASNet space: an LSTM controller trained with PPO (or REINFORCE),
a random-search baseline, child-network rewards evaluated in parallel, and an SQLite journal that makes
the search resumable. Entry point: :func:`search.cli.main` (``nasnet-det search``)."""
