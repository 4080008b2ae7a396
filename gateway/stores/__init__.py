"""Where state lives, behind small protocols (:mod:`gateway.stores.base`), one module per backend."""
