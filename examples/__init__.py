"""Examples of users' own models for ``lvm-pyro fit --model examples.<module>:build``."""
