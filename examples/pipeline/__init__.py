"""An e-commerce order pipeline, one queue per stage, and an order event fanned out to three
services; see tasks.py."""
