"""The e-commerce order pipeline of seed 002 and the fan-out of seed 003; see tasks.py."""
