"""Runnable examples of streamtasks: a Black Friday sale, and an order pipeline with fan-out."""
