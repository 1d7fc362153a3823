from streamtasks.cli import run

run()
