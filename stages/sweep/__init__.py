"""`gps sweep`'s engines: the experiments and DVC's queue, one experiment landed on the remotes, Ray, the guard."""
