"""The shipped algorithms; importing this package registers them by name."""
from algorithms import allreduce_sgd, dpsgd, local_sgd  # noqa: F401
