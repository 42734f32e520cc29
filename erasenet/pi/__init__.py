"""Private inference: the delivered network exported engine-neutrally, and its cost under a two-party protocol.

``export`` (torch) writes the graph and weights; ``reference`` (numpy only) reads and evaluates them;
``spu_engine`` runs them under SecretFlow SPU's Cheetah in its own environment (``python -m erasenet.pi setup``);
``measure`` drives it and writes ``pi_cost.json``. Nothing else in erasenet imports this wing.
"""
