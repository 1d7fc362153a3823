"""Runnable examples of streamtasks, reproducing the scenarios of the seed documents."""
