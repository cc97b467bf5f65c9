"""The shipped algorithms; importing this package registers them by name."""
from algorithms import allreduce_sgd, dpsgd, local_sgd  # noqa: F401
from algorithms import matcha  # noqa: F401,E402  (MATCHA: budgeted random matchings)
from algorithms import al_dsgd  # noqa: F401,E402  (AL-DSGD; builds its base by name at construction)
from algorithms import async_ps, ad_psgd  # noqa: F401,E402  (asynchronous: parameter server, AD-PSGD)
