"""The values the erase keys accept, each defined once: read by the config's validation (before torch is
imported) and by ``erasenet.erase``, which builds them (and imports no Hydra)."""

from __future__ import annotations

# erase.method: which ReLUs a run changes (erasenet.erase.policy, erasenet.erase.gates, erasenet.erase.cull).
METHODS = {"erase": "EraseReLU's rule, erase.location in erase.proportion of the blocks",
           "gates": "SNL: a learned gate on every ReLU, binarised to meet erase.budget",
           "cull": "DeepReDuce: erase.cull_stages culled, the other stages thinned with erase.thin"}
# erase.replace: what takes an erased ReLU's place (erasenet.erase.replacements builds each).
REPLACEMENTS = {"identity": "nothing, the ReLU erased", "prelu": "a PReLU with one learned slope per site",
                "prelu_channel": "a PReLU with one slope per channel",
                "poly": "AutoReP's learned c2 x^2 + c1 x + c0, one set per site",
                "poly_channel": "AutoReP's learned c2 x^2 + c1 x + c0, one set per channel"}
# what a gate (erase.method=gates) chooses between the ReLU and: SNL's identity or AutoReP's polynomial.
GATED_REPLACEMENTS = ("identity", "poly", "poly_channel")
# erase.granularity: one gate per channel or per element of the activation map (erasenet.erase.gates).
GRANULARITIES = ("channel", "element")
# erase.location: a block's site(s) EraseReLU's rule changes, besides a 1-based site index.
LOCATIONS = ("last", "first", "all")
