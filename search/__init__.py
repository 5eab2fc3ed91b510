"""CIFAR-10 architecture search over the NASNet space: an LSTM controller trained with PPO (or REINFORCE),
a random-search baseline, child-network rewards evaluated in parallel, and an SQLite journal that makes
the search resumable. Entry point: :func:`search.cli.main` (``nasnet-det search``)."""

# the estimators that run the search engine register themselves from above it (search/oneshot_supernet.py)
from search import oneshot_supernet as _oneshot_supernet  # noqa: E402,F401
