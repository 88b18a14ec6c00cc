from tunesmith.cli.main import run

run()
