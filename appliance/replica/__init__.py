"""This box as one replica of its store: what it serves its peers and HQ, what it applies from them,
and the rack and session locks it forwards to the store's lock authority."""
