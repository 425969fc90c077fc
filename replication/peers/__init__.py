"""Box ⇄ box ⇄ HQ: the replicator loop, the signed peer client, and the store interface a box implements."""
